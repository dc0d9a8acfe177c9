"""The command line for real: a Hydra multirun, a bad sweep point, bad input, missing data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import run_bnlab as bnlab

from bnlab import compose
from bnlab.analysis.figures import main as figures_main
from bnlab.cli import COMMANDS, complete, sweep_refusal
from bnlab.cli import main as cli_main
from bnlab.runs.collect import main as collect_main
from bnlab.runs.compose import compose_dict
from bnlab.runs.config import ConfigError, load_config, to_dict
from bnlab.runs.records import count_done, read_config

pytestmark = pytest.mark.slow
SHORT = [
    "train.steps=30",
    "train.eval_every=10",
    "data.eval_train_size=1000",
    "train.eval_batch=2000",
]


def test_real_multirun_then_collect(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = bnlab(
        "-m",
        "model.norm=none,batch",
        "model.activation=sigmoid",
        "optim.lr=0.01",
        "seeds=[0,1]",
        *SHORT,
        f"hydra.sweep.dir={sweep}",
        root=mnist_root,
    )
    assert out.returncode == 0, out.stderr
    assert collect_main([str(sweep)]) == 0
    runs = pd.read_parquet(sweep / "runs.parquet")
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert sorted(runs["model.norm"].unique()) == ["batch", "none"]
    assert (runs["test_acc"] > 0.2).all() and (runs["steps_done"] == 30).all()
    history = pd.read_parquet(sweep / "history.parquet")
    assert set(history["step"]) == {0, 10, 20, 30}
    assert len(history.groupby(["run", "seed"])) == 4


def test_a_bad_sweep_value_fails_before_any_job_starts(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = bnlab(
        "-m",
        "model.activation=sigmoid,swish",
        "model.norm=none,batch",
        *SHORT,
        f"hydra.sweep.dir={sweep}",
        root=mnist_root,
    )
    assert out.returncode != 0
    assert "2 of 4 sweep points are invalid; no job was started" in out.stderr
    assert "choose one of: relu, lrelu, sigmoid, softplus, tanh" in out.stderr
    assert not list(sweep.glob("*/config.yaml"))
    out = bnlab("-m", "experiment=nope", f"hydra.sweep.dir={sweep}", root=mnist_root)
    assert out.returncode != 0 and "demo" in out.stderr  # Hydra lists the experiments


def test_unknown_key_and_missing_data_fail_before_training(tmp_path):
    out = bnlab("model.fooo=1", f"hydra.run.dir={tmp_path / 'a'}", root=tmp_path)
    assert out.returncode != 0 and "fooo" in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    out = bnlab(
        f"data.root={empty}", "data.download=false", f"hydra.run.dir={tmp_path / 'b'}", root=empty
    )
    assert out.returncode != 0
    assert "train-images-idx3-ubyte.gz" in out.stderr and "data=mnist5k" in out.stderr
    assert not list((tmp_path / "b").glob("seed*/history.csv"))  # nothing trained


def test_the_readme_sweep_without_a_sweep_folder_stays_in_one_folder(mnist_root, tmp_path):
    """The quickstart line, typed outside the checkout, with both launchers: one timestamp
    folder per sweep and every member counted (it used to split across folders)."""
    for launcher in (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], []):
        cwd = tmp_path / ("joblib" if launcher else "basic")
        cwd.mkdir()
        out = bnlab("-m", *launcher, "model.norm=none,batch", *SHORT, root=mnist_root, cwd=cwd)
        assert out.returncode == 0, out.stderr
        assert "sweep finished: 6/6 members done" in out.stdout + out.stderr
        folders = list((cwd / "results" / "sweeps" / "default").iterdir())
        assert len(folders) == 1 and len(list(folders[0].glob("*/config.yaml"))) == 2
        assert (folders[0] / "jobs.json").exists()


def test_user_mistakes_get_one_line_and_leave_no_folder(mnist_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cases = {
        ("model.activaton=relu",): "did you mean 'model.activation'?",
        (
            "optim=adamw",
        ): "optim=adamw is not an option of the config group optim; choose one of: adam, sgd",
        ("train.epochs=inf",): "train.epochs=inf must be a finite number",
        ("optim.lr=nan",): "optim.lr=nan must be a finite number",
        ("seeds=[-1,0]",): "seeds=[-1, 0] must be integers >= 0",
        ("train.device=cuda",): "CUDA is not available",
        ("model.widths=[100000,100000]",): "GiB are available",
        ("train.evals=100", "train.steps=10"): "train.evals=100 is more than train.steps=10",
        ("name=../../escape",): "must be a plain folder name",
    }
    for args, message in cases.items():  # in this process: refused before Hydra starts
        assert cli_main(["train", *args, f"hydra.run.dir={run_dir}"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, (args, err)
        assert not run_dir.exists()
    out = bnlab("train", "-m", "model.activation=sigmoid,swish", root=mnist_root, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "1 of 2 sweep points are invalid" in out.stderr


def test_bnlab_command_help_and_completion(mnist_root, tmp_path):
    out = bnlab("train", "--help", root=mnist_root, cwd=tmp_path)
    assert out.returncode == 0 and "bnlab train -m" in out.stdout
    assert "experiment: " in out.stdout and "mlds2017_fig4" in out.stdout
    assert "protocol: mlds2017, studies" in out.stdout  # bases apart from the experiments
    out = bnlab("train", "--shell-completion", "install=bash", root=mnist_root, cwd=tmp_path)
    assert out.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion" in (
        out.stdout
    )
    line = "bnlab train model.nor"
    env = {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    out = bnlab("-sc", "query=bash", root=mnist_root, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "model.norm=" in out.stdout.split()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: bnlab {command}" in capsys.readouterr().out


def test_compose_is_what_the_cli_builds(mnist_root, tmp_path, monkeypatch):
    """bnlab.compose takes the CLI's overrides (groups and experiments included) and gives
    the config the CLI saves for the same overrides."""
    overrides = ["experiment=demo", "optim=adam", "model.norm=batch", "seeds=[0]", *SHORT]
    run_dir = tmp_path / "run"
    out = bnlab("train", *overrides, f"hydra.run.dir={run_dir}", root=mnist_root, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "bnlab.log").exists()  # Hydra's job is named bnlab, not __main__
    monkeypatch.setenv("BNLAB_DATA_ROOT", str(mnist_root))
    assert to_dict(compose(overrides)) == read_config(run_dir)
    assert load_config({}).data.root == str(mnist_root)  # the schema's default reads it too
    with pytest.raises(ConfigError, match="did you mean 'model.norm'"):
        compose(["model.nrom=batch"])


def test_a_figure_without_its_runs_says_what_to_train(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    times = pd.DataFrame({"experiment": ["mlds2017_fig2"], "job_s": [240.0]})
    times.to_csv(tmp_path / "tables" / "reproduction_times.csv", index=False)
    assert figures_main(["mlds2017_fig2", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bnlab reproduce --only mlds2017_fig2 (about 2 min on 2 cores)" in err
    assert "not the per-step curves" in err


def test_sweep_and_data_mistakes_are_one_line_and_leave_nothing(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    offline = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    for args, message in {
        ("optim=sgd,adamw",): "optim=adamw is not an option of the config group optim; choose",
        ("experiment=nosuch",): "experiment=nosuch is not an option of the config group",
        ("data.batch_size=100000,64",): "data.batch_size=100000 leaves fewer than two batches",
        ("model.norm=none,batch", f"data.root={tmp_path / 'absent'}"): "MNIST is not available",
    }.items():
        out = bnlab("train", "-m", *args, f"hydra.sweep.dir={sweep}", root=mnist_root, env=offline)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert message in out.stderr, (args, out.stderr)
        assert not list(sweep.glob("*/config.yaml"))
    # data that turns out to be missing only when the run loads it (download=true, offline)
    run_dir = tmp_path / "run"
    args = ["train", f"data.root={tmp_path / 'absent'}", f"hydra.run.dir={run_dir}"]
    out = bnlab(*args, root=mnist_root, env=offline, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: MNIST is not available")
    assert not run_dir.exists()


def test_an_experiment_that_sweeps_needs_m(tmp_path, capsys):
    """`experiment=mlds2017_fig4` without -m used to train one point of its ten."""
    run_dir = tmp_path / "run"
    assert cli_main(["train", "experiment=mlds2017_fig4", f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add -m to train it" in err, err
    assert "model.activation and model.norm (10 runs)" in err and not run_dir.exists()
    fixed = ["experiment=mlds2017_fig4", "model.activation=relu", "model.norm=batch"]
    assert sweep_refusal(compose_dict(fixed, hydra=True), fixed, fixed) is None  # one point


def _interrupt(args, root, ready, cwd) -> subprocess.CompletedProcess:
    """Run bnlab, wait until ready() holds, then press Ctrl-C (SIGINT to its process group,
    as a terminal does)."""
    env = {**os.environ, "BNLAB_DATA_ROOT": str(root), "HYDRA_FULL_ERROR": "0"}
    p = subprocess.Popen(
        [sys.executable, "-m", "bnlab", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    while not ready() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_ctrl_c_says_what_finished_and_exits_130(mnist_root, tmp_path):
    long = ["train.steps=1000000", "train.eval_every=1000", "data.eval_train_size=1000"]
    run_dir = tmp_path / "run"
    out = _interrupt(
        ["train", *long, "seeds=[0,1]", f"hydra.run.dir={run_dir}"], mnist_root,
        lambda: (run_dir / "seed0" / "history.csv").exists(), tmp_path,
    )  # fmt: skip
    assert out.returncode == 130, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "interrupted: 0 of 2 members finished; rerun the same command to resume"
    )
    assert "Traceback" not in out.stderr
    # a parallel sweep: one short point finishes, the long one is interrupted
    sweep = tmp_path / "sweep"
    out = _interrupt(
        ["train", "-m", *long[1:], "train.steps=20,1000000", "seeds=[0]",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
        mnist_root, lambda: count_done(sweep) == 1, tmp_path,
    )  # fmt: skip
    assert out.returncode == 130, out.stderr
    assert "interrupted: 1 of 2 members finished; rerun the same command to resume" in out.stderr
    assert "Traceback" not in out.stderr and "leaked" not in out.stderr, out.stderr


def test_users_add_experiments_with_config_dir_or_searchpath(mnist_root, tmp_path):
    """A user's own experiment file outside the checkout, the Hydra way (docs: sweeps)."""
    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_study.yaml").write_text(
        "# @package _global_\nname: my_study\nmodel:\n  activation: tanh\n"
        "hydra:\n  sweeper:\n    params:\n      model.norm: none,batch\n"
    )
    search = f"hydra.searchpath=[file://{mine}]"
    assert compose([search, "experiment=my_study"]).model.activation == "tanh"
    with pytest.raises(ConfigError, match="choose one of: .*my_study"):
        compose([search, "experiment=my_studdy"])
    run_dir = tmp_path / "run"
    args = ["--config-dir", str(mine), "experiment=my_study", "model.norm=batch", "seeds=[0]"]
    out = bnlab("train", *args, *SHORT, f"hydra.run.dir={run_dir}", root=mnist_root, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert read_config(run_dir)["model"]["activation"] == "tanh"
    sweep = tmp_path / "sweep"
    out = bnlab("train", "-m", search, "experiment=my_study", "seeds=[0]", *SHORT,
                f"hydra.sweep.dir={sweep}", root=mnist_root, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(list(sweep.glob("*/seed0/summary.json"))) == 2


def test_tab_completion_offers_every_fixed_set_and_the_commands_options():
    assert complete("bnlab train model.activation=") == [
        f"model.activation={a}" for a in ("relu", "lrelu", "sigmoid", "softplus", "tanh")
    ]
    assert "model.norm=batch" in complete("bnlab model.norm=b")  # train implied
    assert complete("bnlab train optim=") == ["optim=adam", "optim=sgd"]
    assert complete("bnlab train train.resume=") == ["train.resume=true", "train.resume=false"]
    assert "experiment=mlds2017_fig4" in complete("bnlab train experiment=")
    assert complete("bnlab train model.nor") is None  # keys: Hydra's own completion
    assert "status" in complete("bnlab st") and "train" in complete("bnlab ")
    assert complete("bnlab data ")[-2:] == ["fetch", "check"]
    assert complete("bnlab data fetch --") == ["-h", "--help", "--root"]
    assert "--out" in complete("bnlab figures --")


def test_values_that_need_another_spelling_say_which(capsys, tmp_path):
    for args, message in {
        ("model=batch",): "did you mean model.norm=batch?",
        (f"hydra.run.dir={tmp_path}/a=b",): f"\"hydra.run.dir='{tmp_path}/a=b'\"",
        (f"hydra.run.dir={tmp_path}/a,b",): f"\"hydra.run.dir='{tmp_path}/a,b'\"",
        ("optim.lr=1e308",): "out of float32's range",
        ("seeds=0",): "seeds=0 must be a list, e.g. seeds=[0]",
    }.items():
        assert cli_main(["train", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
