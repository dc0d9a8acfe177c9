"""The training loop: one process trains a seed ensemble and writes its run folder.

`run(cfg, out_dir)` is the whole job; the CLI, tests and notebooks all call it. The parts
live at their own level: the loss (bnlab.engine.loss), the optimisers and the step
(bnlab.engine.optim), the batches (bnlab.engine.data), evaluation (bnlab.engine.evaluation), the
members' log (bnlab.engine.memberlog) and the probes (bnlab.measurement.probes); this module holds
the run folder's rules and the loop.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ..engine.data import Batches, Data, load_data
from ..engine.evaluation import Evaluator, eval_steps
from ..engine.memberlog import MemberLog
from ..engine.model import CLASSES, IN_FEATURES, MLP, build_model
from ..engine.optim import freeze_member, make_optimizer, set_lr, train_step
from ..engine.schedules import lr_factor
from ..measurement.probes import Prober
from ..measurement.reorder import reorder_rows
from ..measurement.shift import shift_rows
from .config import NOT_IDENTITY, ConfigError, RunConfig, to_dict
from .livelog import LiveLog
from .records import (
    DONE_STATUSES,
    History,
    LinkError,
    atomic_path,
    check_member,
    check_no_links,
    code_version,
    fingerprints,
    flatten,
    locked,
    member_dir,
    provenance,
    read_config,
    read_summary,
    read_text,
    write_config,
    write_json,
)

ALLOW_CODE_CHANGE = "BNLAB_ALLOW_CODE_CHANGE"  # =1: resume a folder started with other code
CODE_FILE = "code.json"  # RUN/code.json: the code version the folder was started with
_TOKEN = secrets.token_hex(3)

# hydra.run.dir's default ends in ${now:...}-${bnlab_unique:}: runs started in the same second
# (a shell loop with &, a job array) get folders of their own. One value per process.
OmegaConf.register_new_resolver("bnlab_unique", lambda: _TOKEN, replace=True)


def total_steps(cfg, n_train: int) -> int:
    """train.steps, or with train.epochs set, the steps that many epochs of n_train take."""
    t = cfg.train
    return t.steps if t.epochs is None else math.ceil(t.epochs * n_train / cfg.data.batch_size)


def estimated_seconds(cfg: RunConfig) -> float:
    """A rough single-thread CPU time for a run (bnlab bench's figures on a 2-core
    VM): member-steps at (0.12 + 0.008 * batch) ms per 90k weights, plus evaluations at 3 us
    per image and member. Sweeps start their longest jobs first with it; not a promise."""
    widths = [IN_FEATURES, *cfg.model.widths, CLASSES]
    weights = sum(a * b for a, b in zip(widths, widths[1:]))
    steps = total_steps(cfg, 60000 - cfg.data.holdout)
    step_ms = (0.12 + 0.008 * cfg.data.batch_size) * weights / 90_000
    images = 10000 + cfg.data.eval_train_size
    evals = len(eval_steps(cfg, steps)) + len(cfg.train.final_eval)
    return len(cfg.seeds) * (steps * step_ms / 1e3 + evals * images * 3e-6 * weights / 90_000)


def resolve_device(name: str) -> torch.device:
    """train.device -> torch.device ('auto': CUDA when available); refuses a missing GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available; use train.device=cpu")
    return torch.device(name)


def run(
    cfg: RunConfig, out_dir: str | Path, data: Data | None = None, model: MLP | None = None
) -> list[dict]:
    """Train one ensemble (one member per seed) and write its run folder; return the summaries.

    `cfg` must be a validated RunConfig (bnlab.runs.config.load_config). `data` may be passed to
    reuse tensors already loaded (tests, notebooks); it must match cfg.data. `model` may be
    passed instead of building one from cfg (it is trained in place, so the caller can look
    inside it afterwards); it must have one member per seed that is trained.

    With cfg.train.resume, members whose summary in out_dir says finished or diverged are not
    trained again (their summaries are returned as they are); the others train from scratch.
    Resuming into a folder trained with another config is refused (seeds aside: the folder's
    members are every seed ever run in it), and so is a done member whose fingerprints (in its
    summary) do not match this config or its history, and adding members to a folder started
    with other code (RUN/code.json) unless BNLAB_ALLOW_CODE_CHANGE=1. Folders holding a
    symbolic link where bnlab writes are refused. One process trains in a folder at a time (a
    second waits for the first). A member retrained alone after a kill matches its
    in-ensemble history to float32 rounding (about 1e-7 to 1e-4 relative), not bit for bit:
    the ensemble's batched products round differently with another number of members.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_no_links(out_dir, cfg.seeds)
        with locked(out_dir):
            return _run(cfg, out_dir, data, model)
    except LinkError as e:
        raise ResumeError(str(e)) from None


class ResumeError(ConfigError):
    """A run folder this run must not write into (members of another config or other code,
    a symbolic link where bnlab writes): nothing is written to it."""


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """'key: saved -> wanted' for every setting that differs, seeds and the settings that do
    not change what is computed (config.NOT_IDENTITY) aside; a key missing from an older
    saved config counts as its default."""
    default = flatten(to_dict(RunConfig()))
    old, new = flatten(saved), flatten(wanted)
    skip = {"seeds", *NOT_IDENTITY}
    return [
        f"{k}: {old.get(k, default.get(k))} -> {new.get(k, default.get(k))}"
        for k in sorted(set(old) | set(new))
        if k not in skip and old.get(k, default.get(k)) != new.get(k, default.get(k))
    ]


def _code_change(out_dir: Path) -> str | None:
    """Why the folder's members came from other code than this process runs, or None (the
    same code, a folder started before bnlab recorded it, or BNLAB_ALLOW_CODE_CHANGE=1)."""
    try:
        started = json.loads(read_text(out_dir / CODE_FILE))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"{out_dir / CODE_FILE} is unreadable ({e})"
    old = started.get("code_sha256") if isinstance(started, dict) else None
    if old == code_version():
        return None
    why = (
        f"{out_dir} was started with other code (code_sha256 {str(old)[:12]}, git commit "
        f"{started.get('git_commit') if isinstance(started, dict) else None}) than this bnlab "
        f"(code_sha256 {code_version()[:12]})"
    )
    if os.environ.get(ALLOW_CODE_CHANGE) == "1":
        print(f"{why}; adding members anyway, as {ALLOW_CODE_CHANGE}=1 asks", file=sys.stderr)
        return None
    return why


def _members(cfg: RunConfig, out_dir: Path) -> tuple[list[int], bool, str | None]:
    """The seeds the folder's config.yaml lists after this run (the earlier ones and the
    requested ones), whether members were started in it before, and why its code differs
    (None if it does not). Refuses a folder whose members were trained with another config;
    with train.resume=false, sets such a folder's members aside (also for other code)."""
    path = out_dir / "config.yaml"
    saved = read_config(out_dir) if path.exists() else None
    earlier = saved.get("seeds") if isinstance(saved, dict) else None
    if not (isinstance(earlier, list) and all(isinstance(s, int) for s in earlier)):
        # no record (a lost config.yaml: the members' fingerprints are checked), or a failed
        # composition's record: nothing was trained
        return list(cfg.seeds), False, None
    started = [s for s in earlier if member_dir(out_dir, s).exists()]
    diff = config_differences(saved, to_dict(cfg)) if started else []
    code = _code_change(out_dir) if started else None
    if diff and cfg.train.resume:
        raise ResumeError(
            f"{out_dir} holds members trained with another config ({'; '.join(diff)}); "
            "resume continues only the same config: train into another folder "
            "(hydra.run.dir=DIR, hydra.sweep.dir=DIR) or retrain here with train.resume=false"
        )
    if (diff or code) and not cfg.train.resume:  # the folder starts over
        aside = out_dir / f"replaced-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
        aside.mkdir()
        for name in ["config.yaml", CODE_FILE, *(member_dir(out_dir, s).name for s in started)]:
            if (out_dir / name).exists():
                (out_dir / name).rename(aside / name)
        print(f"{out_dir}: members of the earlier config or code moved to {aside}", file=sys.stderr)
        return list(cfg.seeds), False, None
    return [*earlier, *(s for s in cfg.seeds if s not in earlier)], bool(started), code


def _done(cfg: RunConfig, out_dir: Path, base: dict, had_config: bool) -> dict:
    """{seed: summary} of the requested members done in the folder (with train.resume), each
    checked by its fingerprints against `base`, the config they must have been trained with;
    ResumeError for one that fails."""
    done = {}
    for s in cfg.seeds if cfg.train.resume else []:
        try:
            m = read_summary(out_dir, s)
        except (OSError, ValueError):  # unreadable: not done, trained again
            continue
        if not (isinstance(m, dict) and m.get("status") in DONE_STATUSES):
            continue
        try:
            if "config_sha256" not in m and not had_config:
                raise ValueError(
                    f"{member_dir(out_dir, s) / 'summary.json'}: no fingerprint, and the folder "
                    "has no config.yaml: what it was trained with is unknown"
                )
            check_member(out_dir, s, m, base)
        except ValueError as e:
            raise ResumeError(
                f"cannot resume {out_dir}: {e}; retrain it with train.resume=false or train "
                "into another folder (hydra.run.dir=DIR, hydra.sweep.dir=DIR)"
            ) from None
        done[s] = m
    return done


def _run(cfg: RunConfig, out_dir: Path, data: Data | None, model: MLP | None) -> list[dict]:
    t0 = time.perf_counter()
    had_config = (out_dir / "config.yaml").exists()
    members, started, code = _members(cfg, out_dir)
    # the config the folder's members were trained with (the same as cfg: _members compared
    # them, a setting newer than the folder counting as its default) or, for a new folder or
    # one that lost its config.yaml, cfg: fingerprints are checked against it, and members
    # added to the folder keep it
    base = read_config(out_dir) if started else to_dict(cfg)
    done = _done(cfg, out_dir, base, had_config)
    seeds = [s for s in cfg.seeds if s not in done]
    if not seeds:
        print(f"{out_dir}: all {len(done)} members already done, skipped")
        return [done[s] for s in cfg.seeds]
    if code:  # something would train: members of two code versions in one folder
        raise ResumeError(
            f"{code}; a folder's members must come from one code version: train into "
            "another folder, retrain this one with train.resume=false, or set "
            f"{ALLOW_CODE_CHANGE}=1 to add members anyway (each summary records its code)"
        )
    config = {**base, "seeds": members}
    write_config(out_dir, config)
    prov = provenance()
    if not started:  # the code version the folder is started with
        code_keys = ("code_sha256", "git_commit", "git_dirty")
        write_json(out_dir / CODE_FILE, {k: prov[k] for k in code_keys})
    (out_dir / "failure.json").unlink(missing_ok=True)
    for s in seeds:  # an earlier 'failed' summary would misreport the member while it trains
        (member_dir(out_dir, s) / "summary.json").unlink(missing_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = (data or load_data(cfg.data)).to(device)
    model = build_model(cfg.model, seeds, device) if model is None else model.to(device)
    log = MemberLog([History(out_dir, s) for s in seeds], seeds, device)
    live = LiveLog(cfg.train.log_to, out_dir, seeds)  # train.log_to=tensorboard, else inert
    try:
        steps, epochs, eval_s = _train(cfg, model, data, seeds, log, live)
    finally:
        live.close()
        log.close()  # histories fsynced before the summaries that fingerprint them
    wall = time.perf_counter() - t0
    common = {
        "members": len(seeds),
        "wall_s": wall,
        "eval_s": eval_s,
        "device": str(device),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "epochs": epochs,
        **prov,
    }
    for k, summary in enumerate(log.summaries(steps, wall, common)):
        seed = summary["seed"]
        if cfg.train.save_model and summary["status"] == "finished":
            save_member(model, k, member_dir(out_dir, seed) / "model.pt")
        summary.update(fingerprints(config, member_dir(out_dir, seed) / "history.csv"))
        write_json(member_dir(out_dir, seed) / "summary.json", summary)
        done[seed] = summary
    return [done[s] for s in cfg.seeds]


def _train(
    cfg: RunConfig, model: MLP, data: Data, seeds: list[int], log: MemberLog, live: LiveLog
) -> tuple:
    """The training loop: steps, evaluations and probes on their schedules, rows into the
    members' log (evaluations also to `live`). Returns (steps, epochs started, seconds spent
    evaluating)."""
    steps = total_steps(cfg, len(data.y_train))
    opt = make_optimizer(cfg.optim, model)
    batches = Batches(data.x_train, data.y_train, cfg.data.batch_size, seeds)
    evaluator = Evaluator(cfg, model, data)
    prober = Prober(cfg, model, data.x_train, data.x_test)
    when, probed = eval_steps(cfg, steps), prober.steps(steps)
    show = sys.stderr.isatty() if cfg.train.progress is None else cfg.train.progress
    bar = tqdm(total=steps, desc=cfg.name, disable=not show, mininterval=0.5)

    def evaluate(step: int) -> None:
        rows = evaluator.rows() + log.batch_loss_rows()
        for name in model.order:  # e.g. Batch Renorm's clip fractions since the last one
            stats = getattr(getattr(model, name), "train_stats", dict)()
            rows += [("train", metric, name, v.tolist()) for metric, v in stats.items()]
        log.evaluated(step, rows)
        live.evaluated(step, rows, log.training())
        if not bar.disable:
            bar.set_postfix_str(log.postfix(), refresh=False)

    try:
        model.train()
        step = 0
        evaluate(step)
        log.write(step, prober.state_rows(step))
        for step in range(1, steps + 1):
            x, y = batches.next()  # (K, B, 784), (K, B)
            if cfg.optim.schedule != "constant" or cfg.optim.warmup_steps:
                set_lr(opt, cfg.optim.lr * lr_factor(cfg.optim, step, steps))
            before = prober.before_step(step) if step in probed else None
            losses = train_step(
                model, opt, x, y, log.mask, cfg.train.loss, before is not None, prober.record
            )
            prober.stepped()  # every step: the scale probe's accumulator (nothing when off)
            diverged = log.add_losses(step, losses)
            for k in diverged:  # zeroed and masked: finite and inert from now on
                freeze_member(model, opt, k)
            if diverged and not log.training():
                break
            if step in probed:
                log.write(step, prober.step_rows(step, before, x, y) + prober.state_rows(step))
            if step in when:
                evaluate(step)
            bar.update(1)
        final = evaluator.final_rows()
        if cfg.train.reorder and log.training():  # after the last step: training unchanged
            final += reorder_rows(cfg, model, data, seeds, step)
        if cfg.train.shifts and log.training():
            final += shift_rows(cfg, model, data)
        log.final(step, final)
    finally:
        bar.close()
    return steps, batches.epoch + 1, evaluator.seconds


def member_state(model: MLP, k: int) -> dict[str, torch.Tensor]:
    """Member k's parameters and buffers (every tensor of the state dict with a member axis),
    named as in model.state_dict(), e.g. 'fc1.weight' (out, in), 'bn1.running_mean' (units,)."""
    return {
        name: t[k].detach().cpu().clone()
        for name, t in model.state_dict().items()
        if t.dim() and t.shape[0] == model.members
    }


def save_member(model: MLP, k: int, path: Path) -> None:
    """Write member_state(model, k) to path atomically (torch.save)."""
    with atomic_path(path) as tmp:
        try:
            torch.save(member_state(model, k), tmp)
        except RuntimeError as e:  # torch reports a failed write (a full disk) this way
            raise OSError(errno.EIO, f"torch.save failed ({e})", str(path)) from None


def write_failure(out_dir: str | Path, seeds, error: BaseException) -> None:
    """Record a crashed job: failure.json for the run and a 'failed' summary for every member
    that has none yet (seeds may be unusable when the config itself was the problem)."""
    record = {
        "status": "failed",
        "steps_done": 0,
        "error": f"{type(error).__name__}: {error}",
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    write_json(Path(out_dir) / "failure.json", record)
    for seed in seeds if isinstance(seeds, list) else []:
        path = member_dir(out_dir, seed) / "summary.json"
        if not path.exists():
            write_json(path, {"seed": seed, **record})
