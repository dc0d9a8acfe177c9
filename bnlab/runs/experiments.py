"""The registry of experiments: which sweep folder each one trains into and which figures it
draws. `bnlab reproduce`, `bnlab tables`, `bnlab figures` and `bnlab claims` all ask it.

An experiment is a config, configs/experiment/NAME.yaml, whose sweep writes to
RESULTS/sweeps/SWEEP (the YAML's `hydra.sweep.dir`; a test keeps the two equal). Experiments
that share a protocol share a sweep folder and so reuse each other's runs: the 2017 study's
Fig. 4, Fig. 5, Fig. 1 and the ICS and landscape summaries are one set of runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Experiment:
    name: str  # configs/experiment/NAME.yaml
    sweep: str  # its sweep folder under RESULTS/sweeps
    figures: tuple[str, ...] = ()  # figures drawn from its runs (bnlab.analysis.figures.FIGURES)
    reproduce: bool = True  # part of `bnlab reproduce`
    extra: bool = False  # not in the default reproduction: `bnlab reproduce --extras` adds it
    seeds: int = 5  # members per run in the reproduction (a test checks the YAML agrees)
    # tunes each arm's lr: selection seeds choose, confirmation seeds judge
    # (bnlab.analysis.sequential)
    confirm: bool = False
    arm_keys: tuple[str, ...] = ()  # columns beyond activation/norm/placement naming an arm


# In reproduction order: cheap experiments first, so an interrupted reproduction has results.
_ALL = (
    Experiment("mlds2017_fig2", "mlds2017_early", ("mlds2017_fig2", "activation_grads")),
    Experiment("mlds2017_fig3", "mlds2017_early", ("mlds2017_fig3", "mlds2017_fig3_anim")),
    Experiment("mlds2017_mismatch", "mlds2017_mismatch", ("mlds2017_mismatch",)),
    Experiment("santurkar2018_noisy_bn", "santurkar2018_noisy_bn", ("santurkar2018_noisy_bn",)),
    Experiment("study_lr", "study_lr", ("study_lr",)),
    Experiment("study_init_scale", "study_init_scale", ("study_init_scale",)),
    Experiment("study_placement", "study_placement", ("study_placement",)),
    Experiment("study_dropout", "study_dropout", ("study_dropout",)),
    Experiment("study_bias", "study_bias", ("study_bias",)),
    Experiment("study_order", "study_order", ("study_order",)),
    Experiment("yang2019_depth", "yang2019_depth", ("yang2019_depth",)),
    Experiment("study_input_scale", "yang2019_depth"),  # C3's control, in the depth study's folder
    Experiment(
        "santurkar2018_landscape_lr",
        "santurkar2018_landscape_lr",
        ("santurkar2018_landscape_lr",),
    ),
    Experiment("study_tuned", "study_tuned", ("study_tuned",), seeds=3, confirm=True),
    Experiment("mlds2017_fig4", "mlds2017", ("mlds2017_fig4",)),
    Experiment("mlds2017_fig5", "mlds2017", ("mlds2017_fig5",)),
    Experiment("mlds2017_fig1", "mlds2017", ("mlds2017_fig1",)),
    Experiment("santurkar2018_ics", "mlds2017", ("santurkar2018_ics",)),
    Experiment("santurkar2018_landscape", "mlds2017", ("santurkar2018_landscape",)),
    Experiment("mlds2017_fig6", "mlds2017_batch", ("mlds2017_fig6",)),
    Experiment("mlds2017_fig9", "mlds2017_batch", ("mlds2017_fig9",)),
    Experiment("mlds2017_fig6_epochs", "mlds2017_batch_epochs"),  # Fig. 6's companion panel
    Experiment("ioffe2015_fig1", "ioffe2015", ("ioffe2015_fig1",)),
    # the extras (C20-C28): mechanisms studied since 2018, then the next questions; about 50
    # more minutes on 2 cores
    Experiment("study_scale_equiv", "study_scale_equiv", ("study_scale_equiv",), extra=True),
    Experiment("study_wd", "study_wd", ("study_wd",), extra=True),
    Experiment("study_ghost", "study_ghost", ("study_ghost",), extra=True),
    Experiment("study_shift", "study_shift", ("study_shift",), extra=True),
    Experiment(
        "study_depth",
        "study_depth",
        ("study_depth",),
        seeds=3,
        extra=True,
        confirm=True,
        arm_keys=("depth",),
    ),  # fmt: skip
    Experiment(
        "study_momentum", "study_momentum", ("study_momentum",), seeds=3, extra=True, confirm=True
    ),
    # the next studies (C27 on)
    Experiment("study_matched_lr", "study_matched_lr", ("study_matched_lr",), seeds=10, extra=True),
    Experiment("demo", "demo", ("demo",), reproduce=False),
    Experiment("bn_small_batch_demo", "bn_small_batch_demo", reproduce=False),
)
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in _ALL}
REPRODUCTION: list[str] = [e.name for e in _ALL if e.reproduce and not e.extra]
EXTRAS: list[str] = [e.name for e in _ALL if e.extra]


def sweep(name: str) -> str:
    """The sweep folder of experiment `name`; KeyError naming the known ones if unknown."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name].sweep


def sweeps(names: list[str] | None = None) -> list[str]:
    """The sweep folders of these experiments (default: the reproduction's and the extras'),
    first-use order."""
    names = [*REPRODUCTION, *EXTRAS] if names is None else names
    return list(dict.fromkeys(sweep(n) for n in names))


def experiments_of(sweep_name: str) -> list[str]:
    """The experiments that train into a sweep folder."""
    return [e.name for e in _ALL if e.sweep == sweep_name]


def figures_of(names: list[str]) -> list[str]:
    """The figures these experiments draw, in registry order."""
    return [f for n in names for f in EXPERIMENTS[n].figures]


TIMES = "reproduction_times.csv"  # under RESULTS/tables: each experiment's measured time


def sweep_points(name: str, extra: list[str] = ()) -> dict[str, list[str]]:
    """{run folder name: the overrides of its sweep point} of an experiment with these extra
    overrides, named as bnlab's sweeper names them (Hydra's override_dirname through
    config.sweep_dirname)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from .compose import compose_dict  # below the registry: imported when used

    cfg = compose_dict([f"experiment={name}"], hydra=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    points = BasicSweeper.split_arguments(parsed, None)[0]
    return {point_dirname([*point, *extra]): [*point, *extra] for point in points}


def point_dirname(overrides: list[str]) -> str:
    """The run folder bnlab's sweeper gives a point with these overrides (Hydra's
    override_dirname, without the keys that do not name a run, through config.sweep_dirname)."""
    from .config import NOT_IDENTITY, sweep_dirname

    skip = ("experiment", "seeds", *NOT_IDENTITY)
    return sweep_dirname(",".join(sorted(o for o in overrides if o.split("=", 1)[0] not in skip)))
