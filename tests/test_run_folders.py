"""Run folders that cannot be corrupted or mistaken: one process trains in a folder at a time,
resume continues only the same config, a folder's members are every seed run in it, outputs
are replaced atomically, and a sweep's workers die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import REPO, make_cfg, synthetic_data

from bnlab.runs.collect import collect
from bnlab.runs.config import NOT_IDENTITY, ConfigError
from bnlab.runs.records import atomic_path, locked, member_dir, read_config, read_history
from bnlab.runs.train import run

TINY = ["train.steps=20", "train.eval_every=10", "data.eval_train_size=100"]


def test_resume_refuses_a_folder_trained_with_another_config(tmp_path):
    data = synthetic_data()
    run(make_cfg("optim.lr=0.01", "seeds=[0,1]", *TINY), tmp_path, data=data)
    other = make_cfg("optim.lr=0.5", "model.norm=batch", "seeds=[0,1]", *TINY)
    with pytest.raises(ConfigError) as err:
        run(other, tmp_path, data=data)
    message = str(err.value)
    assert "model.norm: none -> batch" in message and "optim.lr: 0.01 -> 0.5" in message
    assert "train.resume=false" in message and "hydra.run.dir" in message
    assert read_config(tmp_path)["optim"]["lr"] == 0.01  # nothing was touched
    longer = make_cfg("optim.lr=0.01", "seeds=[0,1]", *TINY[1:], "train.steps=40")
    with pytest.raises(ConfigError, match="train.steps: 20 -> 40"):
        run(longer, tmp_path, data=data)
    # settings that do not change what is computed may differ
    same = make_cfg("optim.lr=0.01", "seeds=[0,1]", "train.progress=true", *TINY)
    assert [s["status"] for s in run(same, tmp_path, data=data)] == ["finished"] * 2
    # train.resume=false retrains here with the new config
    again = make_cfg("optim.lr=0.5", "seeds=[0]", "train.resume=false", *TINY)
    assert run(again, tmp_path, data=data)[0]["status"] == "finished"
    saved = read_config(tmp_path)
    assert saved["optim"]["lr"] == 0.5 and saved["seeds"] == [0]
    # the earlier members are set aside, not mistaken for this config's later
    (aside,) = tmp_path.glob("replaced-*")
    assert read_config(aside)["optim"]["lr"] == 0.01 and (aside / "seed1" / "summary.json").exists()
    assert not (tmp_path / "seed1").exists()
    assert sorted(collect(tmp_path)[0]["seed"]) == [0]
    more = make_cfg("optim.lr=0.5", "seeds=[0,1]", *TINY)
    assert [s["members"] for s in run(more, tmp_path, data=data)] == [1, 1]  # seed 1 trained


def test_the_folder_holds_every_seed_ever_run_in_it(tmp_path):
    data = synthetic_data()
    run(make_cfg("seeds=[0,1]", *TINY), tmp_path, data=data)
    run(make_cfg("seeds=[2]", *TINY), tmp_path, data=data)
    assert read_config(tmp_path)["seeds"] == [0, 1, 2]
    runs, _ = collect(tmp_path)
    assert sorted(runs["seed"]) == [0, 1, 2] and set(runs["status"]) == {"finished"}
    run(make_cfg("seeds=[0,1,2]", *TINY), tmp_path, data=data)  # all done: nothing retrained
    assert read_config(tmp_path)["seeds"] == [0, 1, 2]


def test_a_member_resumed_alone_matches_its_ensemble_history(mnist, tmp_path):
    """The documented meaning of 'the same' for resume: float32 rounding differs between an
    ensemble of 3 and a member alone, nothing else does."""
    cfg = make_cfg("model.norm=batch", "optim.lr=0.01", "seeds=[0,1,2]", "train.steps=300",
                   "train.eval_every=100", "data.eval_train_size=1000")  # fmt: skip
    run(cfg, tmp_path, data=mnist)
    before = read_history(tmp_path, 1)
    (member_dir(tmp_path, 1) / "summary.json").unlink()  # as if killed before it finished
    summaries = run(cfg, tmp_path, data=mnist)
    assert summaries[1]["members"] == 1 and summaries[0].get("members") == 3
    after = read_history(tmp_path, 1)
    assert before[["step", "split", "metric", "layer"]].equals(
        after[["step", "split", "metric", "layer"]]
    )
    np.testing.assert_allclose(after["value"], before["value"], rtol=1e-3, atol=1e-6)


def test_atomic_outputs_keep_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "CLAIMS.md"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_folder_identity_keys_match_the_hydra_config():
    with open(REPO / "configs" / "config.yaml") as f:
        exclude = yaml.safe_load(f)["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert set(exclude) == {"experiment", "seeds", *NOT_IDENTITY}


def _bnlab(*args, root, cwd):
    env = {**os.environ, "BNLAB_DATA_ROOT": str(root), "HYDRA_FULL_ERROR": "0"}
    env["BNLAB_ALLOW_CODE_CHANGE"] = "1"  # these test the lock, not an edit of the code meanwhile
    return subprocess.Popen(
        [sys.executable, "-m", "bnlab", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_second_process_waits_for_the_folder_lock(mnist_root, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    env = {**os.environ, "BNLAB_DATA_ROOT": str(mnist_root)}
    cmd = [sys.executable, "-m", "bnlab", "train", "seeds=[0]", *TINY, f"hydra.run.dir={run_dir}"]
    with locked(run_dir), open(log, "w") as err:  # as if another process were training here
        waiting = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=err, stdout=err)
        t0 = time.time()
        while "is training here; waiting for it" not in log.read_text():
            assert waiting.poll() is None and time.time() - t0 < 120, log.read_text()
            time.sleep(0.1)
        time.sleep(1.0)
        assert not member_dir(run_dir, 0).exists()  # nothing written while it waits
    assert waiting.wait(timeout=300) == 0, log.read_text()
    assert read_history(run_dir, 0)["step"].max() == 20


@pytest.mark.slow
def test_two_processes_on_one_run_folder_train_it_once(mnist_root, tmp_path):
    args = ["train", "model.norm=batch", "seeds=[0,1]", "train.steps=1000", "train.eval_every=100",
            "data.eval_train_size=1000", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    first = _bnlab(*args, root=mnist_root, cwd=tmp_path)
    while not (tmp_path / "run" / "seed0" / "history.csv").exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = _bnlab(*args, root=mnist_root, cwd=tmp_path)
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "all 2 members already done, skipped" in out2  # trained once, by the first
    for seed in (0, 1):
        text = (member_dir(tmp_path / "run", seed) / "history.csv").read_text()
        assert "\0" not in text
        assert read_history(tmp_path / "run", seed)["step"].max() == 1000


@pytest.mark.slow
def test_killing_a_joblib_sweep_parent_stops_its_workers(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _bnlab(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "model.norm=none,batch", "seeds=[0]", "train.steps=20000", "train.eval_every=1000",
        f"hydra.sweep.dir={sweep}", root=mnist_root, cwd=tmp_path,
    )  # fmt: skip
    t0 = time.time()
    while len(list(sweep.glob("*/seed0/history.csv"))) < 2:
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    workers = [int(p) for p in children.stdout.split() if int(p) != proc.pid]
    assert workers
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as an OOM killer or a user would
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers kept running after their parent died"
    assert not list(sweep.glob("*/seed0/summary.json"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
