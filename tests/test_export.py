"""`bnlab export` on a small real sweep, read back with TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_cfg, synthetic_data

import bnlab
from bnlab.runs.export import HPARAM_METRIC, main
from bnlab.runs.records import flatten, read_config, read_history

pytestmark = pytest.mark.filterwarnings(  # mlflow 3.17 with SQLAlchemy 2.1, not ours
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

NORMS = ("none", "batch")
SEEDS = (0, 1)
PROBES_OFF = [
    f"probes.{p}.every=0"
    for p in ("grads", "activations", "mismatch", "jacobian", "ics_grad", "landscape")
]
UNFINISHED = ("model.norm=none", 1)  # its summary is removed: must be skipped
DIVERGED = ("model.norm=batch", 1)  # its summary says diverged: must be exported
EXPORTED = [
    (f"model.norm={n}", s) for n in NORMS for s in SEEDS if (f"model.norm={n}", s) != UNFINISHED
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 configurations x 2 seeds, 20 steps, evaluated at 0, 10, 20, weight probes (per-layer
    metrics) at the same steps; one member unfinished, one diverged."""
    root = tmp_path_factory.mktemp("export") / "sweep"
    data = synthetic_data()
    for norm in NORMS:
        cfg = make_cfg(
            f"model.norm={norm}",
            f"seeds=[{','.join(map(str, SEEDS))}]",
            "train.steps=20",
            "train.eval_every=10",
            "data.eval_train_size=100",
            "train.save_model=false",
            "probes.weights.every=10",
            *PROBES_OFF,
        )
        bnlab.run(cfg, root / f"model.norm={norm}", data=data)
    run, seed = UNFINISHED
    (root / run / f"seed{seed}" / "summary.json").unlink()
    run, seed = DIVERGED
    path = root / run / f"seed{seed}" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "diverged"}))
    return root


def history(root: Path, run: str, seed: int) -> dict:
    """{(split, metric, layer): (steps, values)} of a member, read from its history.csv."""
    h = read_history(root / run, seed)
    assert len(h) > 0
    return {
        key: (g["step"].to_numpy(), g["value"].to_numpy())
        for key, g in h.groupby(["split", "metric", "layer"], sort=False)
    }


def summary(root: Path, run: str, seed: int) -> dict:
    return json.loads((root / run / f"seed{seed}" / "summary.json").read_text())


def one_error_line(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_export_reads_back(sweep, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    out = tmp_path / "tb"
    assert main(["--to", "tensorboard", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 members" in printed and "unfinished 1" in printed
    assert f"tensorboard --logdir {out}" in printed

    # one event folder per exported member, nothing else (no hparams subfolder)
    event_dirs = {p.parent.relative_to(out).as_posix() for p in out.rglob("events.out.tfevents*")}
    assert event_dirs == {f"{run}/seed{seed}" for run, seed in EXPORTED}

    for run, seed in EXPORTED:
        ea = EventAccumulator(str(out / run / f"seed{seed}"), size_guidance={"scalars": 0})
        ea.Reload()
        expected = history(sweep, run, seed)
        tags = {"/".join(p for p in key if p): key for key in expected}
        assert set(ea.Tags()["scalars"]) == set(tags) | {HPARAM_METRIC}
        assert "test/acc" in tags and "train/w_fro/fc1" in tags
        for tag, key in tags.items():
            events = ea.Scalars(tag)
            steps, values = expected[key]
            assert [e.step for e in events] == steps.tolist(), tag
            np.testing.assert_allclose(
                [e.value for e in events], values.astype(np.float32), rtol=1e-7, err_msg=tag
            )
        assert ea.Scalars("test/acc")[-1].step == 20
        assert [e.step for e in ea.Scalars("test/acc")] == [0, 10, 20]

        # hparams: the config and seed, with the final test accuracy as metric
        final = ea.Scalars(HPARAM_METRIC)
        assert len(final) == 1
        assert final[0].value == pytest.approx(summary(sweep, run, seed)["test_acc"], rel=1e-6)
        content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = metadata.parse_session_start_info_plugin_data(content).hparams
        config = flatten({k: v for k, v in read_config(sweep / run).items() if k != "seeds"})
        assert set(hp) == set(config) | {"seed"}
        assert hp["seed"].number_value == seed
        assert hp["model.norm"].string_value == run.split("=")[1]
        assert hp["train.steps"].number_value == 20
        assert hp["model.widths"].string_value == "[100,100]"
        assert hp["model.bias_before_norm"].bool_value is False
        assert hp["data.test_ratio"].string_value == "None"

    # exporting again into the same folder is refused and changes nothing
    files = sorted(out.rglob("*"))
    assert main(["--to", "tensorboard", str(sweep), "--out", str(out)]) == 2
    one_error_line(capsys, str(out), "--out")
    assert sorted(out.rglob("*")) == files


def test_tensorboard_default_out(sweep, capsys):
    assert main(["--to", "tensorboard", str(sweep)]) == 0
    out = sweep / "export" / "tensorboard"
    assert len(list(out.glob("*/seed*/events.out.tfevents*"))) == 2 * len(EXPORTED)
    capsys.readouterr()
    assert main(["--to", "tensorboard", str(sweep)]) == 2
    one_error_line(capsys, "--out")


def test_tensorboard_single_run_folder(sweep, tmp_path, capsys):
    out = tmp_path / "tb"
    assert main(["--to", "tensorboard", str(sweep / "model.norm=batch"), "--out", str(out)]) == 0
    event_dirs = {p.parent.relative_to(out).as_posix() for p in out.rglob("events.out.tfevents*")}
    assert event_dirs == {"seed0", "seed1"}


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_out(sweep, tmp_path_factory) -> Path:
    """One MLflow export of the sweep (creating the SQLite store takes several seconds)."""
    out = tmp_path_factory.mktemp("mlflow") / "out"
    assert main(["--to", "mlflow", str(sweep), "--out", str(out)]) == 0
    return out


def mlflow_runs(out: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_mlflow_export_reads_back(sweep, mlflow_out):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client, runs = mlflow_runs(mlflow_out, sweep.name)
    parents = {
        r.data.tags[MLFLOW_RUN_NAME]: r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags
    }
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert sorted(parents) == [f"model.norm={n}" for n in sorted(NORMS)]
    assert len(children) == len(EXPORTED)

    for run, parent in parents.items():
        config = flatten({k: v for k, v in read_config(sweep / run).items() if k != "seeds"})
        assert parent.data.params == {k: str(v) for k, v in config.items()}
        assert parent.data.params["model.norm"] == run.split("=")[1]
        assert parent.data.params["train.steps"] == "20"
        assert parent.data.metrics == {}
        assert parent.info.status == "FINISHED"

    by_id = {r.info.run_id: name for name, r in parents.items()}
    seen = set()
    for child in children:
        run = by_id[child.data.tags[MLFLOW_PARENT_RUN_ID]]
        seed = int(child.data.params["seed"])
        seen.add((run, seed))
        assert child.data.tags[MLFLOW_RUN_NAME] == f"seed{seed}"
        assert child.data.params == {"seed": str(seed)}
        assert child.data.tags["status"] == ("diverged" if (run, seed) == DIVERGED else "finished")
        assert child.info.status == "FINISHED"
        expected = history(sweep, run, seed)
        keys = {".".join(p for p in key if p): key for key in expected}
        assert set(child.data.metrics) == set(keys)
        assert "test.acc" in keys and "train.w_fro.fc1" in keys
        for name, key in keys.items():
            points = sorted(
                client.get_metric_history(child.info.run_id, name), key=lambda m: m.step
            )
            steps, values = expected[key]
            assert [m.step for m in points] == steps.tolist(), name
            assert [m.value for m in points] == values.tolist(), name
        acc = summary(sweep, run, seed)["test_acc"]
        assert child.data.metrics["test.acc"] == acc
    assert sorted(seen) == sorted(EXPORTED)


def test_mlflow_reexport_is_refused(sweep, mlflow_out, capsys):
    assert main(["--to", "mlflow", str(sweep), "--out", str(mlflow_out)]) == 2
    one_error_line(capsys, "--out", sweep.name)
    _, runs = mlflow_runs(mlflow_out, sweep.name)
    assert len(runs) == len(NORMS) + len(EXPORTED)
    assert not (Path.cwd() / "mlruns").exists()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("to", ["tensorboard", "mlflow"])
def test_missing_folder_and_no_runs(to, tmp_path, capsys):
    assert main(["--to", to, str(tmp_path / "nope")]) == 2
    one_error_line(capsys, "nope", "is not a folder")
    assert main(["--to", to, str(tmp_path)]) == 2
    one_error_line(capsys, "no bnlab runs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "to, modules",
    [
        ("tensorboard", ["torch.utils.tensorboard"]),
        ("mlflow", ["mlflow", "mlflow.entities", "mlflow.tracking", "mlflow.utils.mlflow_tags"]),
    ],
)
def test_library_not_installed(to, modules, sweep, tmp_path, monkeypatch, capsys):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import fails as if not installed
    out = tmp_path / "out"
    assert main(["--to", to, str(sweep), "--out", str(out)]) == 2
    one_error_line(capsys, "pip install 'bnlab[track]'")
    assert not out.exists()


def test_libraries_are_imported_lazily():
    tree = ast.parse(Path(bnlab.runs.export.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("mlflow", "tensorboard", "torch")]
