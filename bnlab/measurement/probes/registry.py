"""The registry of probes: each probe's name, its kind and the function that computes its rows.

A probe is registered where its rows are computed, with the decorator `probe(NAME, KIND)` on
the function. NAME is its schedule: the field `probes.NAME.every` of
bnlab.runs.config.ProbesConfig. KIND says what it looks at:

- STATE: the model as it is after step t (step 0: at initialisation), on the fixed probe batch;
  called as rows(prober, step) with the Prober (its model, cfg, x_train, x_test, and memory:
  what a probe keeps between firings, under its name) and the step number.
- STEP: training step t itself (its batch, gradient and update), at t >= 1; called as
  rows(prober, step) with a prober.Step (its number, the parameters before it, its
  StepContext). The Prober saves what the step needs before it and has the step write its
  weight gradients only when some STEP probe is due.

A name may carry one function of each kind (weights: norms of the state, and the step's
relative update). At a step the Prober writes the STEP probes' rows, then the STATE probes',
each in the order of the schedules in ProbesConfig (`schedules`), whatever the order of
registration.

The schedules are fields of bnlab/runs/config.py's ProbesConfig, one `NAME: Every = _every(N)
# what it records` line per probe: the configuration reference (docs/hooks.py) is read from
that file's source, each field with the comment beside it. Config derives its list of
schedules, config.PROBES, from those fields, validates them (every >= 0), and calls `check`
below when it is imported: a registry and a config that do not name the same probes fail every
run and every test at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

STATE, STEP = "state", "step"


class Probe(NamedTuple):
    name: str  # its schedule: probes.<name>.every (a field of config.ProbesConfig)
    kind: str  # STATE or STEP
    rows: Callable[..., list]  # rows(prober, step) -> [(split, metric, layer, values)]


REGISTRY: dict[tuple[str, str], Probe] = {}  # (name, kind) -> its probe


def probe(name: str, kind: str) -> Callable:
    """Decorator: register the function as probe `name`'s rows of this kind (STATE or STEP)."""
    if kind not in (STATE, STEP):
        raise ValueError(f"probe {name!r}: kind {kind!r} is neither {STATE!r} nor {STEP!r}")
    if (name, kind) in REGISTRY:
        raise ValueError(f"probe {name!r} already has a {kind} function")

    def register(rows: Callable[..., list]) -> Callable[..., list]:
        REGISTRY[name, kind] = Probe(name, kind, rows)
        return rows

    return register


def names() -> set[str]:
    """The registered probes' names."""
    return {name for name, _ in REGISTRY}


def check(schedules: tuple[str, ...]) -> None:
    """Refuse a registry that does not name exactly the probes with a schedule in config."""
    unscheduled = sorted(names() - set(schedules))
    unregistered = [n for n in schedules if n not in names()]
    if unscheduled or unregistered:
        raise TypeError(
            f"probes without a schedule: {unscheduled} (add `NAME: Every = _every(N)  # what it "
            "records` to ProbesConfig in bnlab/runs/config.py); schedules without a probe: "
            f"{unregistered} (register its rows with @probe(NAME, STATE or STEP) in "
            "bnlab/measurement/probes/)"
        )


def schedules(probes) -> list[str]:
    """The names of the probes' schedules in a ProbesConfig, in its order."""
    return [name for name, value in vars(probes).items() if hasattr(value, "every")]
