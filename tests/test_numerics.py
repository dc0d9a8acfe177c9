"""Numerics fingerprint: a short real-MNIST run for every activation x norm x placement x
optimiser of the registries, its loss history compared with committed reference values.

Tables regenerated from old runs cannot show that training's arithmetic changed; this does.
A change that moves training numerics fails here. If the change is meant, regenerate the
references in the same commit and say why, and retrain (or list) the committed experiments
it affects (`bnlab reproduce --check NAME` compares one with what the code trains now):

    BNLAB_DATA_ROOT=... .venv/bin/python tests/test_numerics.py --update

The references are compared exactly: a float32 rounding difference is the smallest change
training numerics can make, and a relu network grows one last-bit difference into test
accuracies 0.001 apart within 5,000 steps. Exact comparison is what makes a run on another
machine comparable at all: the same torch build and CPU kernels give the same bits
(bnlab pins the kernels: bnlab/__init__.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).with_name("numerics_reference.json")
STEPS, EVERY = 120, 60
LR = {"sgd": 0.1, "adam": 1e-3}


def settings() -> list[tuple[str, list[str]]]:
    """(id, overrides) for every activation x norm x placement x optimiser the registries hold."""
    from bnlab.engine.layers import ACTIVATIONS
    from bnlab.engine.norms import NORMS
    from bnlab.runs.config import OPTIMS, PLACEMENTS

    out = []
    for act in ACTIVATIONS:
        for norm in ["none", *NORMS]:
            for place in PLACEMENTS if norm != "none" else [None]:
                for opt in OPTIMS:
                    over = [f"model.activation={act}", f"model.norm={norm}", f"optim={opt}"]
                    over += [f"model.placement={place}"] if place else []
                    over.append(f"optim.lr={LR[opt]}")
                    out.append(("-".join([act, norm, *([place] if place else []), opt]), over))
    return out


def fingerprint(overrides: list[str], data, tmp: Path) -> dict:
    """Per member, the mean training-batch loss and the test loss at every evaluation."""
    from conftest import make_cfg

    from bnlab.runs.records import read_history
    from bnlab.runs.train import run

    cfg = make_cfg(
        "seeds=[0,1]",
        "data.batch_size=64",
        "train.loss=mean",
        f"train.steps={STEPS}",
        f"train.eval_every={EVERY}",
        "train.save_model=false",
        "data.eval_train_size=1000",
        *(f"probes.{p}.every=0" for p in PROBES_OFF),
        *overrides,
    )
    run(cfg, tmp, data=data)
    out = {}
    for seed in cfg.seeds:
        h = read_history(tmp, seed)
        rows = h[h["metric"].isin(["batch_loss", "loss"]) & h["split"].isin(["train", "test"])]
        rows = rows[(rows["split"] == "test") | (rows["metric"] == "batch_loss")]
        out[str(seed)] = {
            f"{r.split}_{r.metric}@{r.step}": float(r.value) for r in rows.itertuples()
        }
    return out


PROBES_OFF = ("weights", "grads", "activations", "mismatch", "jacobian", "ics_grad", "landscape")
CASES = settings()


def kernel_level() -> str:
    """The vectorised CPU kernels ATen dispatches to (they round some reductions differently)."""
    return torch.backends.cpu.get_cpu_capability()


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def test_reference_covers_the_registries(reference):
    """A new activation, norm, placement or optimiser needs its reference (run --update)."""
    assert sorted(reference["runs"]) == sorted(name for name, _ in CASES)


def test_kernels_pinned(reference):
    """bnlab pins ATen's CPU kernels on x86 (bnlab/__init__.py), so numbers do not depend on
    whether the processor has AVX512; the references were made with the same kernels."""
    if reference["kernels"] != kernel_level():
        pytest.fail(
            f"ATen dispatches {kernel_level()} kernels here; the references use "
            f"{reference['kernels']} (was torch used before bnlab was imported?)"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", CASES, ids=[n for n, _ in CASES])
def test_training_numerics_unchanged(name, overrides, reference, mnist, tmp_path):
    want = reference["runs"][name]
    got = fingerprint(overrides, mnist, tmp_path)
    assert got.keys() == want.keys()
    for seed in want:
        assert got[seed].keys() == want[seed].keys(), f"{name} seed {seed}: other evaluations"
        keys = sorted(want[seed])
        torch.testing.assert_close(
            torch.tensor([got[seed][k] for k in keys], dtype=torch.float64),
            torch.tensor([want[seed][k] for k in keys], dtype=torch.float64),
            rtol=0,
            atol=0,
            msg=lambda m, n=name, s=seed: f"training numerics moved: {n} seed {s}\n{m}",
        )


def update() -> None:
    """Regenerate the reference file (see the module docstring)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import DATA_ROOT

    from bnlab.engine.data import load_data
    from bnlab.runs.config import DataConfig

    data = load_data(DataConfig(root=str(DATA_ROOT), download=False))
    runs = {}
    for name, overrides in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = fingerprint(overrides, data, Path(tmp))
        print(name, flush=True)
    doc = {"torch": torch.__version__, "kernels": kernel_level(), "runs": runs}
    REFERENCE.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: BNLAB_DATA_ROOT=DIR {sys.argv[0]} --update")
    update()
