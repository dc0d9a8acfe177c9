"""Throughput of bnlab's training step against a naive PyTorch loop, in one process.

    bnlab bench [--data-root DIR] [--threads 1] [--json out.json]

For batch sizes 4, 64 and 256 (784-100-100-10, BN before sigmoid, plain SGD, summed loss) it
prints milliseconds per step of
  - the naive reference: DataLoader over a TensorDataset, nn.Sequential with nn.BatchNorm1d,
    torch.optim.SGD;
  - bnlab's step (bnlab.engine.data.Batches + bnlab.engine.optim.train_step, what run() executes per
  step) for
    ensembles of 1, 8 and 16 members, per member-step;
  - the FLOP-bound limit: 6 * B * P flops per member-step (forward, and backward for weights
    and inputs; P = weights) at the matrix-multiply rate measured in this same run (the goals'
    definition; the first layer needs no input gradient, so a step's own flops are 4.2 * B * P).
Then the project's throughput goals against those figures, the cost of one evaluation and its
share of a run on the reproduction's schedules, the probe overhead on the default schedule, and
the whole machine's member-steps per second with one process, two one-thread processes and one
two-thread process (--parallel-seconds 0 skips that). Ratios are what to read: absolute times
move with the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnlab.engine.data import Batches, load_data
from bnlab.engine.evaluation import eval_steps, evaluate
from bnlab.engine.model import build_model
from bnlab.engine.optim import make_optimizer, train_step
from bnlab.measurement.probes import Prober
from bnlab.runs import train
from bnlab.runs.config import (
    PROBES,
    DataConfig,
    Every,
    ModelConfig,
    OptimConfig,
    ProbesConfig,
    RunConfig,
    TrainConfig,
)
from bnlab.runs.records import write_atomic

WEIGHTS = 784 * 100 + 100 * 100 + 100 * 10
MODEL = ModelConfig(activation="sigmoid", norm="batch", placement="before")
OPTIM = OptimConfig(name="sgd", lr=1e-3)


def timed_together(steps: dict, seconds: float, rounds: int = 5) -> dict:
    """Seconds per call of each step function, measured round-robin (so slow phases of a
    shared machine hit all of them alike); each gets the best of `rounds` timings."""
    calls = {}
    for name, step in steps.items():
        for _ in range(20):  # warm-up
            step()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            step()
            n += 1
        calls[name] = max(2 * n, 10)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                step()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    return best


def matmul_rate() -> float:
    """Single-process float32 GEMM rate (flop/s) on a large square product, best of 5."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


def naive_step_fn(data, batch_size: int):
    """The loop a tutorial writes: DataLoader, nn.Sequential with nn.BatchNorm1d, torch.optim."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(784, 100, bias=False),
        nn.BatchNorm1d(100, eps=1e-3),
        nn.Sigmoid(),
        nn.Linear(100, 100, bias=False),
        nn.BatchNorm1d(100, eps=1e-3),
        nn.Sigmoid(),
        nn.Linear(100, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=OPTIM.lr)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        loss = F.cross_entropy(net(x), y, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def bnlab_step_fn(data, batch_size: int, members: int, autograd: bool = False):
    """bnlab's step; with autograd, the same ensemble layout with every layer's backward by
    autograd (the fallback layers without a hand-written backward get) and torch.optim's SGD."""
    seeds = list(range(members))
    model = build_model(MODEL, seeds, autograd=autograd)
    opt = (
        torch.optim.SGD(model.parameters(), OPTIM.lr) if autograd else make_optimizer(OPTIM, model)
    )
    batches = Batches(data.x_train, data.y_train, batch_size, seeds)
    model.train()

    def step():  # the body of run()'s training loop on a step without step probes
        x, y = batches.next()
        train_step(model, opt, x, y, None, "sum", weight_grads=False)

    return step


def loop_cost(data, batch_size: int, members: int, steps: int) -> dict:
    """Milliseconds per step of run()'s whole loop (probes off, evaluations only at the start
    and the end), from a run of `steps` steps minus one of steps/5 (so the fixed costs cancel;
    the best of three each), next to the isolated step timed in the same process."""
    off = ProbesConfig(**{name: Every(0) for name in PROBES})

    def run_s(n: int) -> float:
        cfg = RunConfig(
            name="bench",
            seeds=list(range(members)),
            model=copy.deepcopy(MODEL),
            optim=OPTIM,
            data=DataConfig(batch_size=batch_size, download=False),
            train=TrainConfig(steps=n, eval_every=n, threads=0, progress=False, save_model=False),
            probes=off,
        )
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            train.run(cfg, folder, data=data)
            return time.perf_counter() - t0

    run_s(steps // 10)  # warm-up
    long, short = zip(*((run_s(steps), run_s(steps // 5)) for _ in range(3)))  # best of 3
    loop = (min(long) - min(short)) / (steps - steps // 5)
    step = timed_together({"step": bnlab_step_fn(data, batch_size, members)}, 0.5)["step"]
    return {"loop_ms": loop * 1e3, "step_ms": step * 1e3}


def evaluation_cost(data, members: int, batch_size: int, seconds: float = 1.0) -> dict:
    """Seconds per evaluation as run() does it (full test set and a 10,000-image training
    subset, eval mode), and the same time in training steps of `batch_size`."""
    seeds = list(range(members))
    model = build_model(MODEL, seeds)
    x_fit, y_fit = data.x_train[:10000], data.y_train[:10000]

    def evaluation():
        evaluate(model, data.x_test, data.y_test, 10000)
        evaluate(model, x_fit, y_fit, 10000)

    t = timed_together(
        {"eval": evaluation, "step": bnlab_step_fn(data, batch_size, members)},
        seconds=seconds,
        rounds=3,
    )
    return {"eval_s": t["eval"], "step_s": t["step"], "steps_per_eval": t["eval"] / t["step"]}


def probe_overhead(data, batch_size: int, members: int, steps: int) -> dict:
    """Training `steps` steps with the default probe schedule (bnlab.runs.config.ProbesConfig):
    seconds spent inside the probe calls and in the rest of the loop, and the whole loop
    without probes for comparison (noisier: two separate timings)."""
    cfg = RunConfig(model=MODEL, optim=OPTIM)
    seeds = list(range(members))

    def loop(with_probes: bool) -> tuple[float, float]:
        model = build_model(MODEL, seeds)
        opt = make_optimizer(OPTIM, model)
        batches = Batches(data.x_train, data.y_train, batch_size, seeds)
        prober = Prober(cfg, model, data.x_train, data.x_test)
        model.train()
        probing, t0 = 0.0, time.perf_counter()
        for step in range(0, steps + 1):
            if step:
                x, y = batches.next()
                t1 = time.perf_counter()
                before = prober.before_step(step) if with_probes else None
                probing += time.perf_counter() - t1
                train_step(model, opt, x, y, None, "sum", before is not None)
            if with_probes:
                t1 = time.perf_counter()
                prober.step_rows(step, before, x, y) if step else None
                prober.state_rows(step)
                probing += time.perf_counter() - t1
        return time.perf_counter() - t0, probing

    off, _ = loop(False)
    on, probing = loop(True)
    return {"off_s": off, "on_s": on, "probe_s": probing}


def _steps_for(args: tuple) -> int:
    """Worker: bnlab steps (batch, members) with `threads` threads in `seconds` seconds."""
    root, batch, members, threads, seconds = args
    torch.set_num_threads(threads)
    step = bnlab_step_fn(load_data(DataConfig(root=root, download=False)), batch, members)
    for _ in range(20):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n


def parallel_throughput(root: str, batch: int, members: int, seconds: float) -> dict:
    """Member-steps per second of the whole machine: one process with one thread, two
    processes with one thread each (what the reproduction does), one process with two."""
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for name, procs, threads in (("1x1", 1, 1), ("2x1", 2, 1), ("1x2", 1, 2)):
        with ctx.Pool(procs) as pool:
            steps = pool.map(_steps_for, [(root, batch, members, threads, seconds)] * procs)
        out[name] = sum(steps) * members / seconds
    return out


def eval_share(eval_s: float, step_s: float) -> dict:
    """Share of a run's time spent evaluating, on the reproduction's schedules (the 2017
    study's protocol, the claim studies', Santurkar's noisy BN), from measured per-evaluation
    and per-step costs (probes and the final evaluations left out: a real run's share is lower;
    bnlab.reproduce reports the measured one per experiment)."""
    schedules = {
        "mlds2017 (40,000 steps, every 1,000, every 250 to 5,000)": TrainConfig(
            steps=40000, eval_every=1000, eval_dense_until=5000, eval_dense_every=250
        ),
        "claim studies (5,000 steps, every 500)": TrainConfig(steps=5000, eval_every=500),
        "noisy BN (5,000 steps, every 250)": TrainConfig(steps=5000, eval_every=250),
    }
    share = {}
    for name, t in schedules.items():
        evals = len(eval_steps(RunConfig(train=t)))
        share[name] = evals * eval_s / (evals * eval_s + t.steps * step_s)
    return share


def print_goals(rows: list[dict]) -> None:
    """The throughput goals of the project's performance issue, against this run's figures."""
    by = {r["batch"]: r for r in rows}
    goals = [  # (batch, members, what, measured, target, higher is better)
        (64, 8, "x bound", lambda r, k: r["bnlab"][k] / r["flop_bound_ms"], 1.6, False),
        (64, 1, "x naive", lambda r, k: r["naive_ms"] / r["bnlab"][k], 1.8, True),
        (4, 16, "x naive", lambda r, k: r["naive_ms"] / r["bnlab"][k], 6.0, True),
        (256, 16, "x bound", lambda r, k: r["bnlab"][k] / r["flop_bound_ms"], 1.3, False),
    ]
    for b, k, what, f, target, higher in goals:
        if b in by and k in by[b]["bnlab"]:
            v = f(by[b], k)
            ok = v >= target if higher else v <= target
            sign = ">=" if higher else "<="
            print(
                f"goal batch {b}, K={k}: {v:.2f}{what} (target {sign} {target}x): "
                + ("met" if ok else "not met")
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("BNLAB_DATA_ROOT", "./data"),
        help="folder holding MNIST/raw/ (default: $BNLAB_DATA_ROOT or ./data)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=0.3, help="time per measurement round")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 64, 256])
    p.add_argument("--members", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--probe-steps", type=int, default=10000, help="steps for probe overhead")
    p.add_argument("--loop-steps", type=int, default=5000, help="steps of the whole-loop runs")
    p.add_argument(
        "--parallel-seconds",
        type=float,
        default=10.0,
        help="seconds per process/thread layout in the whole-machine comparison (0: skip)",
    )
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument(
        "--markdown",
        type=Path,
        help="also write what is printed to this file as a Markdown page section (make bench: "
        "docs/generated/bench.md, which the docs' performance page includes)",
    )
    args = p.parse_args(argv)
    if args.markdown:
        printed = io.StringIO()
        with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
            rc = _bench(args)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = f"Measured {when} on {platform.node()} ({os.cpu_count()} CPUs) by `make bench`:\n"
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.markdown, f"{text}\n```text\n{printed.getvalue()}```\n")
        return rc
    return _bench(args)


class _Tee(io.TextIOBase):
    """A stream writing to several streams (the terminal and the Markdown copy)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def _bench(args) -> int:
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(root=args.data_root, download=False))
    rate = matmul_rate()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), "
        f"matmul rate {rate / 1e9:.1f} GFLOP/s (1024^3 float32)"
    )
    head = f"{'batch':>5} {'naive':>8} {'FLOP bound':>10}  " + "  ".join(
        f"{f'K={k}':>8} {'x naive':>7} {'x bound':>7} {'autograd':>8}" for k in args.members
    )
    print("ms per member-step\n" + head)
    results = []
    for b in args.batch_sizes:
        steps = {"naive": naive_step_fn(data, b)}
        steps.update({k: bnlab_step_fn(data, b, k) for k in args.members})
        steps.update({("autograd", k): bnlab_step_fn(data, b, k, True) for k in args.members})
        t = timed_together(steps, args.seconds)
        naive, bound = t["naive"], 6 * b * WEIGHTS / rate
        row = {"batch": b, "naive_ms": naive * 1e3, "flop_bound_ms": bound * 1e3}
        row.update(bnlab={}, autograd={})
        cells = []
        for k in args.members:
            per_member, auto = t[k] / k, t["autograd", k] / k
            row["bnlab"][k], row["autograd"][k] = per_member * 1e3, auto * 1e3
            cells.append(
                f"{per_member * 1e3:8.3f} {naive / per_member:6.2f}x {per_member / bound:6.2f}x "
                f"{auto / per_member:7.2f}x"
            )
        print(f"{b:5d} {naive * 1e3:8.3f} {bound * 1e3:10.3f}  " + "  ".join(cells))
        results.append(row)
    print(
        "x naive: speed-up over the naive loop (higher is better); "
        "x bound: time over the FLOP-bound limit (6 B P flops; the first layer needs no input "
        "gradient, so a step's own flops are 4.2 B P: 0.71x is the hard limit); autograd: the "
        "same ensemble with autograd's backward (and torch.optim.SGD), time over bnlab's"
    )
    print_goals(results)
    for b, k in ((4, 1), (64, 5)):
        lc = loop_cost(data, b, k, args.loop_steps)
        print(
            f"whole loop (run(), probes off), batch {b}, {k} member(s): {lc['loop_ms']:.3f} ms "
            f"per step vs {lc['step_ms']:.3f} ms for the step alone "
            f"({lc['loop_ms'] / lc['step_ms']:.2f}x)"
        )
    ev = evaluation_cost(data, 5, 64, 3 * args.seconds)
    print(
        f"evaluation (10,000 test + 10,000 training images, 5 members): "
        f"{ev['eval_s'] * 1e3:.0f} ms = {ev['steps_per_eval']:.0f} training steps at batch 64"
    )
    for name, share in eval_share(ev["eval_s"], ev["step_s"]).items():
        print(f"  share of run time spent evaluating, {name}: {100 * share:.0f}%")
    if args.parallel_seconds:
        par = parallel_throughput(args.data_root, 64, 5, args.parallel_seconds)
        print(
            "whole machine, batch 64, 5 members per process, member-steps/s: "
            + ", ".join(f"{k} (processes x threads) {v:.0f}" for k, v in par.items())
        )
    po = probe_overhead(data, 64, 5, args.probe_steps)
    print(
        f"probes, default schedule (cheap every 500 steps, gradient ICS and landscape every "
        f"2000, Jacobian every 5000), batch 64, 5 members, {args.probe_steps} steps: "
        f"{po['probe_s']:.2f} s inside probe calls = "
        f"{100 * po['probe_s'] / (po['on_s'] - po['probe_s']):.1f}% of the training loop "
        f"(whole loop {po['off_s']:.1f} s without probes, {po['on_s']:.1f} s with)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "matmul_gflops": rate / 1e9,
                    "threads": args.threads,
                    "torch": torch.__version__,
                    "rows": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
