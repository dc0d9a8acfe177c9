"""Members that know what they are: fingerprints of config and history checked by collect and
resume, the code version a folder was started with, settings compared with their nulls, no
single bad file stopping a command, and run folders that bnlab writes only through its own
files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, make_cfg, synthetic_data
from conftest import run_bnlab as _bnlab

from bnlab.runs.collect import collect
from bnlab.runs.collect import main as collect_main
from bnlab.runs.records import member_dir, read_summary, write_config
from bnlab.runs.status import main as status_main
from bnlab.runs.summary import main as summary_main
from bnlab.runs.train import ResumeError, run

TINY = ["train.steps=20", "train.eval_every=10", "data.eval_train_size=100", "seeds=[0,1]"]


def _corrupt(runs: pd.DataFrame) -> dict:
    """{seed: error} of the corrupt rows."""
    bad = runs[runs["status"] == "corrupt"]
    return dict(zip(bad["seed"], bad["error"]))


# ---- null is a value


def test_summary_keeps_a_null_setting_as_its_own_configuration(tmp_path, capsys):
    for i, momentum in enumerate([None, 0.1]):
        write_config(tmp_path / str(i), {"seeds": [0, 1], "model": {"bn_momentum": momentum}})
        for seed in (0, 1):
            d = tmp_path / str(i) / f"seed{seed}"
            d.mkdir()
            (d / "history.csv").write_text("step,split,metric,layer,value\n")
            summary = {"status": "finished", "test_acc": 0.5 + 0.1 * i + 0.01 * seed}
            (d / "summary.json").write_text(json.dumps(summary))
    assert collect_main([str(tmp_path)]) == 0
    for by in ([], ["--by", "model.bn_momentum"]):
        out = tmp_path / "s.csv"
        assert summary_main([str(tmp_path), *by, "--out", str(out)]) == 0
        table = pd.read_csv(out, keep_default_na=False)
        assert list(table["model.bn_momentum"].astype(str)) == ["0.1", "null"]
        assert list(table["seeds"]) == [2, 2]
        assert table["test_acc_mean"].tolist() == pytest.approx([0.605, 0.505])
    capsys.readouterr()
    assert summary_main([str(tmp_path), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --metrics nope: no such column") and err.count("\n") == 1


# ---- fingerprints: a member knows its config and its history


@pytest.fixture
def trained(tmp_path):
    """A 2-member run folder, trained (in this process) on synthetic data."""
    cfg = make_cfg("optim.lr=0.01", *TINY)
    run(cfg, tmp_path / "run", data=synthetic_data())
    return tmp_path / "run", cfg


def test_a_members_summary_carries_its_fingerprints(trained):
    run_dir, _ = trained
    summary = read_summary(run_dir, 0)
    assert len(summary["config_sha256"]) == len(summary["history_sha256"]) == 64
    lines = (member_dir(run_dir, 0) / "history.csv").read_text().count("\n")
    assert summary["history_rows"] == lines - 1
    assert set(collect(run_dir)[0]["status"]) == {"finished"}


def _cut(path, fraction):
    text = path.read_text()
    path.write_text(text[: text.index("\n", int(len(text) * fraction)) + 1])


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_yaml(path, key, value):
    config = yaml.safe_load(path.read_text())
    group, name = key.split(".")
    config[group][name] = value
    path.write_text(yaml.safe_dump(config))


TAMPERING = {
    "history cut to 40%": (lambda r: _cut(member_dir(r, 0) / "history.csv", 0.4), "history.csv"),
    "summary's accuracy edited": (
        lambda r: _edit_json(member_dir(r, 0) / "summary.json", test_acc=0.99),
        "summary.json",
    ),
    "config edited": (lambda r: _edit_yaml(r / "config.yaml", "optim.lr", 0.5), "summary.json"),
}


@pytest.mark.parametrize("how", TAMPERING, ids=list(TAMPERING))
def test_collect_marks_a_tampered_member_corrupt_naming_the_file(trained, how):
    run_dir, _ = trained
    tamper, name = TAMPERING[how]
    tamper(run_dir)
    runs, _ = collect(run_dir)
    corrupt = _corrupt(runs)
    assert 0 in corrupt and corrupt[0].startswith(str(member_dir(run_dir, 0) / name))
    if how != "config edited":  # the other member is collected as usual
        assert runs.loc[runs["seed"] == 1, "status"].item() == "finished"


def test_a_member_copied_from_another_run_is_corrupt(tmp_path, trained):
    run_dir, _ = trained
    bn = tmp_path / "bn"
    run(make_cfg("optim.lr=0.01", "model.norm=batch", *TINY), bn, data=synthetic_data())
    shutil.rmtree(member_dir(run_dir, 1))
    shutil.copytree(member_dir(bn, 1), member_dir(run_dir, 1))
    corrupt = _corrupt(collect(run_dir)[0])
    assert list(corrupt) == [1] and "another config" in corrupt[1]


def test_resume_refuses_members_whose_fingerprint_does_not_match(trained):
    run_dir, cfg = trained
    (run_dir / "config.yaml").unlink()  # lost: the members alone must say what they are
    other = make_cfg("optim.lr=0.5", *TINY)
    with pytest.raises(ResumeError, match="trained with another config"):
        run(other, run_dir, data=synthetic_data())
    # the same config resumes: nothing to train
    assert [s["status"] for s in run(cfg, run_dir, data=synthetic_data())] == ["finished"] * 2


def test_resume_refuses_a_member_whose_history_was_cut(trained):
    run_dir, cfg = trained
    _cut(member_dir(run_dir, 1) / "history.csv", 0.4)
    with pytest.raises(ResumeError, match="history.csv"):
        run(cfg, run_dir, data=synthetic_data())


# ---- provenance


def test_resume_with_other_code_is_refused_unless_allowed(trained, monkeypatch):
    run_dir, cfg = trained
    code = json.loads((run_dir / "code.json").read_text())
    assert code["code_sha256"] == read_summary(run_dir, 0)["code_sha256"]
    (run_dir / "code.json").write_text(json.dumps({**code, "code_sha256": "0" * 64}))
    more = make_cfg("optim.lr=0.01", *TINY[:-1], "seeds=[0,1,2]")
    with pytest.raises(ResumeError, match="BNLAB_ALLOW_CODE_CHANGE=1"):
        run(more, run_dir, data=synthetic_data())
    assert not member_dir(run_dir, 2).exists()
    monkeypatch.setenv("BNLAB_ALLOW_CODE_CHANGE", "1")
    assert run(more, run_dir, data=synthetic_data())[2]["status"] == "finished"


def test_git_dirty_sees_changes_in_a_checkout(tmp_path):
    """records.provenance, loaded from a checkout's bnlab/runs/records.py: dirty once a source file
    under bnlab/ changes (git used to run inside bnlab/, where the pathspecs matched nothing)."""
    (tmp_path / "bnlab" / "runs").mkdir(parents=True)
    path = tmp_path / "bnlab/runs/records.py"
    shutil.copy(REPO / "bnlab/runs/records.py", path)

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    spec = importlib.util.spec_from_file_location("checkout_records", path)
    records = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(records)
    assert records.provenance()["git_dirty"] is False
    with open(path, "a") as f:
        f.write("# changed\n")
    assert records.provenance()["git_dirty"] is True


def test_a_sweep_below_a_replaced_folder_is_collected(tmp_path, trained):
    run_dir, _ = trained
    sweep = tmp_path / "replaced-2026" / "sweep"
    shutil.copytree(run_dir, sweep / "point")
    runs, _ = collect(sweep.resolve())
    assert list(runs["status"]) == ["finished", "finished"]


# ---- one bad file does not stop a command


def test_a_fifo_or_a_link_to_dev_zero_is_a_corrupt_member(tmp_path, trained):
    run_dir, _ = trained
    os.unlink(member_dir(run_dir, 0) / "summary.json")
    os.mkfifo(member_dir(run_dir, 0) / "summary.json")
    (member_dir(run_dir, 1) / "history.csv").unlink()
    (member_dir(run_dir, 1) / "history.csv").symlink_to("/dev/zero")
    env = {**os.environ, "BNLAB_DATA_ROOT": "/nonexistent"}
    for command in ("status", "collect"):
        out = subprocess.run(
            [sys.executable, "-m", "bnlab", command, str(run_dir)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert "Traceback" not in out.stderr, out.stderr
        assert out.stdout.count("not a regular file") + out.stderr.count("not a regular") == 2
    assert status_main([str(run_dir)]) == 1


# ---- run folders hold bnlab's own files


@pytest.mark.parametrize("name", [".lock", "bnlab.log", "seed0"])
def test_a_symbolic_link_in_a_run_folder_is_refused(mnist_root, tmp_path, name):
    run_dir, target = tmp_path / "run", tmp_path / "target"
    run_dir.mkdir()
    target.write_text("precious\n")
    (run_dir / name).symlink_to(target)
    out = _bnlab("train", "seeds=[0]", "train.steps=5", f"hydra.run.dir={run_dir}",
                 root=mnist_root, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{run_dir / name} is a symbolic link" in out.stderr
    assert target.read_text() == "precious\n"


def test_the_log_is_not_written_through_a_link(tmp_path):
    from bnlab.runs.records import NoFollowFileHandler

    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "bnlab.log").symlink_to(target)
    import logging

    handler = NoFollowFileHandler(str(tmp_path / "bnlab.log"))
    handler.emit(logging.makeLogRecord({"msg": "hello"}))
    handler.close()
    assert target.read_text() == "precious\n"


def test_a_sweep_subdir_outside_the_sweep_folder_is_refused(mnist_root, tmp_path):
    out = _bnlab("train", "-m", "model.norm=none,batch", "hydra.sweep.dir=s",
                 "hydra.sweep.subdir=../../x", root=mnist_root, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "outside the sweep folder" in out.stderr
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "x").exists()


def test_single_runs_started_together_get_their_own_folders(mnist_root, tmp_path):
    env = {**os.environ, "BNLAB_DATA_ROOT": str(mnist_root), "BNLAB_RESULTS": str(tmp_path)}
    cmd = [sys.executable, "-m", "bnlab", "train", "seeds=[0]", "train.steps=5",
           "train.eval_every=5", "data.eval_train_size=100"]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    folders = list((tmp_path / "runs" / "default").iterdir())
    assert len(folders) == 2
    assert all(read_summary(f, 0)["status"] == "finished" for f in folders)


# ---- one configuration, one folder


def test_spelling_out_a_default_lands_in_the_same_folder(mnist_root, tmp_path):
    args = ["train", "-m", "model.norm=none,batch", "seeds=[0]", "train.steps=5",
            "train.eval_every=5", "data.eval_train_size=100", "hydra.sweep.dir=s"]  # fmt: skip
    allow = {"BNLAB_ALLOW_CODE_CHANGE": "1"}  # an edit of the source tree meanwhile
    assert _bnlab(*args, root=mnist_root, cwd=tmp_path).returncode == 0
    out = _bnlab(*args, "train.threads=1", root=mnist_root, cwd=tmp_path, env=allow)
    assert out.returncode == 0, out.stderr
    assert "2/2 members done (2 skipped" in out.stdout + out.stderr
    assert len(collect(tmp_path / "s")[0]) == 2
    # two spellings of one configuration in one sweep: one job
    out = _bnlab("train", "-m", "optim.lr=0.1,1e-1", *args[3:], root=mnist_root, cwd=tmp_path,
                 env=allow)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(collect(tmp_path / "s")[0]) == 3


# ---- the sweeper


def test_the_sweeper_plugin_imports_nothing_heavy(tmp_path):
    """Hydra imports every plugin module when any Hydra application starts: bnlab's must not
    bring torch (seconds) or bnlab along."""
    app = tmp_path / "app.py"
    app.write_text(
        "import sys\nimport hydra\n\n"
        "@hydra.main(version_base=None)\n"
        "def main(cfg):\n"
        "    from hydra.core.plugins import Plugins\n"
        "    from hydra.plugins.sweeper import Sweeper\n"
        "    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bnlab'))\n"
        "    print('BnlabSweeper' in names, heavy[:5])\n\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the repository's hydra_plugins namespace
    out = subprocess.run([sys.executable, str(app), "hydra.run.dir=."], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "True []", out.stdout


def test_a_missing_data_folder_is_reported_once_with_its_message(tmp_path):
    empty = tmp_path / "empty"  # exists, but holds no MNIST: the data check's whole message
    empty.mkdir()
    out = _bnlab("train", "-m", "model.norm=none,batch", "data.download=false",
                 root=empty, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sweep points are invalid" not in out.stderr
    assert "no job was started: every sweep point reads the data in" in out.stderr
    assert out.stderr.count("MNIST is not available") == 1
    assert "\n  Fix it in one of these ways:" in out.stderr  # its lines kept
    assert max(len(line) for line in out.stderr.splitlines()) < 200
    # a data folder that does not exist: refused by validation, once for every point
    out = _bnlab("train", "-m", "model.norm=none,batch", "data.download=false",
                 root=tmp_path / "nowhere", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "2 of 2 sweep points are invalid" in out.stderr and "every sweep point" in out.stderr
    assert out.stderr.count("does not exist") == 1


def test_a_member_without_fingerprints_in_a_fingerprinted_folder_is_corrupt(trained):
    run_dir, _ = trained
    path = member_dir(run_dir, 0) / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in summary.items() if "sha256" not in k}))
    corrupt = _corrupt(collect(run_dir)[0])
    assert list(corrupt) == [0] and "no fingerprint" in corrupt[0]


def test_hydras_default_subdir_names_the_points_by_number(mnist_root, tmp_path):
    out = _bnlab("train", "-m", "model.norm=none,batch", "seeds=[0]", "train.steps=5",
                 "train.eval_every=5", "data.eval_train_size=100", "hydra.sweep.dir=s",
                 "hydra.sweep.subdir=${hydra.job.num}", root=mnist_root, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "s").iterdir() if p.is_dir()} == {"0", "1"}


def test_other_job_logging_choices_still_work(mnist_root, tmp_path):
    """conf/config.yaml sets bnlab.log's handler; Hydra's other logging choices stay valid."""
    out = _bnlab("train", "seeds=[0]", "train.steps=5", "train.eval_every=5",
                 "data.eval_train_size=100", "hydra/job_logging=disabled",
                 f"hydra.run.dir={tmp_path / 'run'}", root=mnist_root, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "run" / "bnlab.log").exists()
