"""The training loop: one process trains a seed ensemble and writes its run folder.

`run(cfg, out_dir)` is the whole job; the CLI, tests and notebooks all call it.
"""

from __future__ import annotations

import errno
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import NOT_IDENTITY, ConfigError, OptimConfig, RunConfig, to_dict
from .data import Data, load_data
from .layers import generator
from .model import CLASSES, IN_FEATURES, MLP, build_model
from .norms import BATCH_STAT_NORMS, population_statistics, set_eval_stats
from .probes import Prober
from .records import (
    DONE_STATUSES,
    History,
    atomic_path,
    flatten,
    locked,
    member_dir,
    provenance,
    read_config,
    read_summary,
    write_config,
    write_json,
)


class SGD:
    """Plain SGD (no momentum, no weight decay), p -= lr * grad, the update torch.optim.SGD
    makes. The linear weights are updated by Linear.sgd_step, one GEMM from the layer's saved
    input and output gradient, so their gradient is not needed (MLP.backward(...,
    weight_grads=False)); every other parameter from its .grad (one foreach add). The first
    layer's gradient and update take 1.7-2.6x less time at batch 4 with 16 members
    (bnlab bench times whole steps). Rounds differently from gradient-then-update in
    the last bit."""

    def __init__(self, model: MLP, lr: float):
        self.lr, self.linears = lr, model.linears()
        fused = {id(lin.weight) for lin in self.linears}
        self.others = [p for p in model.parameters() if id(p) not in fused]
        self.state: dict = {}  # no optimiser state (run() zeroes a diverged member's state)

    @torch.no_grad()
    def step(self) -> None:
        """Call after MLP.backward."""
        for lin in self.linears:
            lin.sgd_step(self.lr)
        torch._foreach_add_(self.others, [p.grad for p in self.others], alpha=-self.lr)


def make_optimizer(cfg: OptimConfig, model: MLP) -> SGD | torch.optim.Optimizer:
    """bnlab's SGD for plain SGD; torch.optim's SGD (multi-tensor) with momentum or weight
    decay; torch.optim's Adam (fused kernel: ~4x faster than multi-tensor on CPU). All update
    elementwise (or per member), so each ensemble member is updated exactly as if alone."""
    if cfg.name == "sgd" and cfg.momentum == 0 and cfg.weight_decay == 0:
        return SGD(model, cfg.lr)
    params = list(model.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.Adam(
        params,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


class Batches:
    """Per-member shuffled mini-batches of (x, y) held as tensors (no DataLoader).

    Each member reshuffles every epoch from its own generator; the last partial batch of an
    epoch is dropped (never a batch of size 1).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seeds: list[int]):
        self.x, self.y, self.batch_size, self.members = x, y, batch_size, len(seeds)
        self.per_epoch = len(y) // batch_size
        self.gens = [generator(s, "data") for s in seeds]
        self.pos = self.per_epoch
        self.epoch = -1

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of every member: x (K, B, 784), y (K, B)."""
        if self.pos == self.per_epoch:
            used = self.per_epoch * self.batch_size
            perms = [torch.randperm(len(self.y), generator=g)[:used] for g in self.gens]
            # (per_epoch, K*B): row i holds batch i of every member, member-major
            order = torch.stack(perms).view(self.members, self.per_epoch, -1).transpose(0, 1)
            self.order = order.reshape(self.per_epoch, -1).to(self.y.device)
            self.pos, self.epoch = 0, self.epoch + 1
        idx = self.order[self.pos]
        self.pos += 1
        x = self.x.index_select(0, idx).view(self.members, self.batch_size, -1)
        return x, self.y.index_select(0, idx).view(self.members, self.batch_size)


def member_losses(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy (fused log-softmax) per member, summed or averaged over the batch: (K,)."""
    k, b, c = logits.shape
    per_example = F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none")
    per_example = per_example.view(k, b)
    return per_example.sum(1) if reduction == "sum" else per_example.mean(1)


def loss_and_grad(logits: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple:
    """Per-member cross-entropy (K,) and its gradient dL/dlogits = softmax - onehot (K, B, C),
    divided by B for the mean reduction."""
    logp = torch.log_softmax(logits, -1)
    target = y.unsqueeze(-1)  # (K, B, 1)
    losses = -logp.gather(-1, target).sum((1, 2))
    minus_one = torch.tensor(-1.0, dtype=logp.dtype, device=logp.device).expand(target.shape)
    grad = logp.exp_().scatter_add_(-1, target, minus_one)
    if reduction == "mean":
        b = logits.shape[1]
        return losses / b, grad.div_(b)
    return losses, grad


@torch.no_grad()
def train_step(
    model: MLP,
    opt: SGD | torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    alive: torch.Tensor | None,
    reduction: str,
    weight_grads: bool = True,
) -> torch.Tensor:
    """One optimiser step of every member on its own batch x (K, B, 784), y (K, B).

    Explicit backward (MLP.backward), no autograd graph. With bnlab's SGD the linear weights'
    .grad is only written when `weight_grads` (probes read it); the update is the same.
    `alive` (K,) bool masks members out (None: all alive). A masked member, or one whose loss
    is not finite, gets a zero loss gradient, so nothing outside its own slice of the
    parameters can change (run() then freezes it). Returns the per-member losses (K,).
    """
    losses, dlogits = loss_and_grad(model(x), y, reduction)
    keep = alive
    if not math.isfinite(losses.sum().item()):  # rare: also drop members with non-finite loss
        keep = torch.isfinite(losses) if alive is None else alive & torch.isfinite(losses)
    if keep is not None:
        dlogits = torch.where(keep.view(-1, 1, 1), dlogits, 0.0)
    model.backward(dlogits, weight_grads or not isinstance(opt, SGD))
    opt.step()
    return losses


EVAL_CHUNK = 1000  # examples per forward when no layer evaluates with batch statistics


@torch.no_grad()
def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple:
    """Mean cross-entropy and accuracy per member, (K,) each, in eval mode.

    x (N, 784) is shared by all members and fed in chunks of `batch` examples (the batch
    whose statistics BN uses when evaluating with batch statistics). When no layer uses the
    batch's statistics, every example's output is independent of the others and chunks of at
    most EVAL_CHUNK keep the work in cache (a third faster than 10,000 at once in a run).
    """
    was_training = model.training
    model.eval()
    if not any(getattr(m, "eval_stats", None) == "batch" for m in model.modules()):
        batch = min(batch, EVAL_CHUNK)
    loss = torch.zeros(model.members, device=x.device, dtype=torch.float64)
    correct = torch.zeros(model.members, device=x.device, dtype=torch.float64)
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])  # (K, b, 10)
        yb = y[i : i + batch].expand(model.members, -1)
        loss += member_losses(logits, yb, "sum").double()
        correct += (logits.argmax(-1) == yb).sum(1).double()
    model.train(was_training)
    return loss / len(x), correct / len(x)


def total_steps(cfg, n_train: int) -> int:
    """train.steps, or with train.epochs set, the steps that many epochs of n_train take."""
    t = cfg.train
    return t.steps if t.epochs is None else math.ceil(t.epochs * n_train / cfg.data.batch_size)


def eval_steps(cfg, steps: int | None = None) -> set[int]:
    """The steps at which a run of `steps` steps (default train.steps) evaluates: 0, every
    eval_every (or train.evals evenly spaced points), the dense early ones, and the last."""
    t = cfg.train
    steps = t.steps if steps is None else steps
    if t.evals:
        when = {round(i * steps / t.evals) for i in range(t.evals + 1)}
    else:
        when = set(range(0, steps + 1, t.eval_every))
    when |= set(range(0, min(t.eval_dense_until, steps + 1), t.eval_dense_every))
    return when | {steps}


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


def _zero_member(model: MLP, opt: SGD | torch.optim.Optimizer, k: int) -> None:
    """Freeze a diverged member: zero its parameters, buffers and optimiser state so it stays
    finite and inert (its loss is masked out, so it receives zero gradients from now on)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() > 0 and t.shape[0] == model.members:
                t[k] = 0.0
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == model.members:
                    v[k] = 0.0


def run(
    cfg: RunConfig, out_dir: str | Path, data: Data | None = None, model: MLP | None = None
) -> list[dict]:
    """Train one ensemble (one member per seed) and write its run folder; return the summaries.

    `cfg` must be a validated RunConfig (bnlab.config.load_config). `data` may be passed to
    reuse tensors already loaded (tests, notebooks); it must match cfg.data. `model` may be
    passed instead of building one from cfg (it is trained in place, so the caller can look
    inside it afterwards); it must have one member per seed that is trained.

    With cfg.train.resume, members whose summary in out_dir says finished or diverged are not
    trained again (their summaries are returned as they are); the others train from scratch.
    Resuming into a folder trained with another config is refused (seeds aside: the folder's
    members are every seed ever run in it). One process trains in a folder at a time (a
    second waits for the first). A member retrained alone after a kill matches its
    in-ensemble history to float32 rounding (about 1e-7 to 1e-4 relative), not bit for bit:
    the ensemble's batched products round differently with another number of members.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir):
        return _run(cfg, out_dir, data, model)


class ResumeError(ConfigError):
    """A run folder holds members of another config: nothing is written to it."""


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


def _members(cfg: RunConfig, out_dir: Path) -> list[int]:
    """The seeds the folder's config.yaml lists after this run: the earlier ones and the
    requested ones. Refuses a folder whose members were trained with another config."""
    path = out_dir / "config.yaml"
    if not path.exists():
        return list(cfg.seeds)
    saved = read_config(out_dir)
    earlier = saved.get("seeds") if isinstance(saved, dict) else None
    if not (isinstance(earlier, list) and all(isinstance(s, int) for s in earlier)):
        return list(cfg.seeds)  # a failed composition's record: nothing was trained
    started = [s for s in earlier if member_dir(out_dir, s).exists()]
    diff = config_differences(saved, to_dict(cfg)) if started else []
    if diff and cfg.train.resume:
        raise ResumeError(
            f"{out_dir} holds members trained with another config ({'; '.join(diff)}); "
            "resume continues only the same config: train into another folder "
            "(hydra.run.dir=DIR, hydra.sweep.dir=DIR) or retrain here with train.resume=false"
        )
    if diff:  # train.resume=false with another config: the folder starts over
        aside = out_dir / f"replaced-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
        aside.mkdir()
        for name in ["config.yaml", *(member_dir(out_dir, s).name for s in started)]:
            (out_dir / name).rename(aside / name)
        print(f"{out_dir}: members of the earlier config moved to {aside}", file=sys.stderr)
        return list(cfg.seeds)
    return [*earlier, *(s for s in cfg.seeds if s not in earlier)]


def _run(cfg: RunConfig, out_dir: Path, data: Data | None, model: MLP | None) -> list[dict]:
    t0 = time.perf_counter()
    members = _members(cfg, out_dir)
    done = {}
    if cfg.train.resume:
        done = {
            s: m
            for s in cfg.seeds
            if (m := read_summary(out_dir, s)) and m["status"] in DONE_STATUSES
        }
    seeds = [s for s in cfg.seeds if s not in done]
    if not seeds:
        print(f"{out_dir}: all {len(done)} members already done, skipped")
        return [done[s] for s in cfg.seeds]
    write_config(out_dir, {**to_dict(cfg), "seeds": members})
    (out_dir / "failure.json").unlink(missing_ok=True)
    for s in seeds:  # an earlier 'failed' summary would misreport the member while it trains
        (member_dir(out_dir, s) / "summary.json").unlink(missing_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = (data or load_data(cfg.data)).to(device)

    steps, reduction = total_steps(cfg, len(data.y_train)), cfg.train.loss
    model = build_model(cfg.model, seeds, device) if model is None else model.to(device)
    opt = make_optimizer(cfg.optim, model)
    batches = Batches(data.x_train, data.y_train, cfg.data.batch_size, seeds)
    x_fit = data.x_train[: cfg.data.eval_train_size]
    y_fit = data.y_train[: cfg.data.eval_train_size]
    histories = [History(out_dir, s) for s in seeds]
    alive = torch.ones(len(seeds), dtype=torch.bool, device=device)
    all_alive = True
    status = ["finished"] * len(seeds)
    steps_done = [steps] * len(seeds)
    last = [dict() for _ in seeds]  # last good evaluation per member
    best = [0.0] * len(seeds)
    batch_loss = torch.zeros(len(seeds), device=device)
    n_batch_loss = 0
    eval_s = 0.0  # seconds spent evaluating (reported in the summaries)
    when = eval_steps(cfg, steps)
    prober = Prober(cfg, model, data.x_train, data.x_test)

    def population() -> None:
        m = cfg.model
        population_statistics(
            model, data.x_train, cfg.data.batch_size, m.population_batches, m.population_lower
        )

    def write_rows(step: int, rows: list) -> None:
        """rows: (split, metric, layer, values (K,)); written for members still training."""
        if not rows:
            return
        for k, h in enumerate(histories):
            if status[k] == "finished":
                for split, metric, layer, values in rows:
                    h.add(step, split, metric, float(values[k]), layer)
                h.flush()

    def log_eval(step: int) -> None:
        nonlocal n_batch_loss, eval_s
        t_eval = time.perf_counter()
        if cfg.model.bn_eval == "population":
            population()
        rows = []
        for split, x, y in (("test", data.x_test, data.y_test), ("train", x_fit, y_fit)):
            loss, acc = evaluate(model, x, y, cfg.train.eval_batch)
            rows += [(split, "loss", "", loss.tolist()), (split, "acc", "", acc.tolist())]
        if n_batch_loss:
            rows.append(("train", "batch_loss", "", (batch_loss / n_batch_loss).tolist()))
        for name in model.order:  # e.g. Batch Renorm's clip fractions since the last eval
            stats = getattr(getattr(model, name), "train_stats", dict)()
            rows += [("train", metric, name, v.tolist()) for metric, v in stats.items()]
        write_rows(step, rows)
        values = {f"{split}_{metric}": v for split, metric, _, v in rows[:4]}
        for k in range(len(seeds)):
            if status[k] == "finished":
                last[k] = {key: v[k] for key, v in values.items()}
                best[k] = max(best[k], last[k]["test_acc"])
        batch_loss.zero_()
        n_batch_loss = 0
        if not bar.disable:  # mean over the members still training
            on = [k for k in range(len(seeds)) if status[k] == "finished"] or [0]
            acc, loss = (sum(values[m][k] for k in on) / len(on) for m in ("test_acc", "test_loss"))
            bar.set_postfix_str(f"test acc {acc:.4f}, loss {loss:.4f}", refresh=False)
        eval_s += time.perf_counter() - t_eval

    def final_evals(step: int) -> None:
        """Test loss/accuracy under each BN evaluation mode of train.final_eval."""
        nonlocal eval_s
        t_eval = time.perf_counter()
        rows = []
        modes = cfg.train.final_eval if cfg.model.norm in BATCH_STAT_NORMS else []
        for mode in modes:  # only where a layer uses batch statistics: no fake copies
            set_eval_stats(model, mode)
            if mode == "population":
                population()
            loss, acc = evaluate(model, data.x_test, data.y_test, cfg.train.eval_batch)
            rows += [
                ("test", f"loss_{mode}", "", loss.tolist()),
                ("test", f"acc_{mode}", "", acc.tolist()),
            ]
        set_eval_stats(model, cfg.model.bn_eval)
        write_rows(step, rows)
        for k in range(len(seeds)):
            if status[k] == "finished":
                last[k].update({f"test_{metric}": v[k] for _, metric, _, v in rows})
        eval_s += time.perf_counter() - t_eval

    show = sys.stderr.isatty() if cfg.train.progress is None else cfg.train.progress
    bar = tqdm(total=steps, desc=cfg.name, disable=not show, mininterval=0.5)
    try:
        model.train()
        step = 0
        log_eval(step)
        write_rows(step, prober.state_rows(step))
        for step in range(1, steps + 1):
            x, y = batches.next()  # (K, B, 784), (K, B)
            before = prober.before_step(step)
            mask = None if all_alive else alive
            losses = train_step(model, opt, x, y, mask, reduction, weight_grads=before is not None)
            finite = torch.isfinite(losses)
            if not bool((finite | ~alive).all()):
                all_alive = False
                for k in torch.nonzero(alive & ~finite).flatten().tolist():
                    status[k], steps_done[k] = "diverged", step - 1
                    _zero_member(model, opt, k)
                alive &= finite
                if not bool(alive.any()):
                    break
            batch_loss += torch.where(alive, losses, 0.0)
            n_batch_loss += 1
            write_rows(step, prober.step_rows(step, before, x, y) + prober.state_rows(step))
            if step in when:
                log_eval(step)
            bar.update(1)
        final_evals(step)
    finally:
        bar.close()
        for h in histories:
            h.close()

    wall = time.perf_counter() - t0
    common = {
        "members": len(seeds),
        "wall_s": wall,
        "eval_s": eval_s,
        "device": str(device),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "epochs": batches.epoch + 1,
        **provenance(),
    }
    for k, seed in enumerate(seeds):
        summary = {
            "seed": seed,
            "status": status[k],
            "steps_done": steps_done[k],
            "steps_per_s": steps_done[k] / wall,
            "best_test_acc": best[k],
            "error": None,
            **last[k],
            **common,
        }
        if cfg.train.save_model and status[k] == "finished":
            save_member(model, k, member_dir(out_dir, seed) / "model.pt")
        write_json(member_dir(out_dir, seed) / "summary.json", summary)
        done[seed] = summary
    return [done[s] for s in cfg.seeds]


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
