"""The batch-order intervention (claim C17), an end-of-run evaluation with the weights frozen:
does the order of the last mini-batches change BN's running statistics, with everything else
held fixed?

With train.reorder=R at the end of a run, the weights are frozen and, for every member, the
running mean and variance of every batch-statistics norm layer are recomputed over the
member's own last train.reorder_batches=n training batches, in R random orders. Then the test
set is evaluated with each order's running statistics. Two members with different data orders
also end with different weights; here the weights and the set of batches are the same, and
only the order in which the moving average (Ioffe & Szegedy 2015, Sec. 3.1; PyTorch's
convention) sees them differs.

- Batches: regenerated, not stored. `Batches` draws each member's order from its seed alone,
  so a fresh one replayed over index tensors gives the run's batches at steps N-n+1..N.
- Batch statistics: one training-mode pass over the n batches with the frozen weights, as in
  training: every norm layer normalises with its batch's statistics (so the layers above see
  what they saw in training), dropout and noise on, their masks drawn once per batch from the
  members' own streams. A training-mode BN layer does not read its running statistics, so each
  batch's mean and unbiased variance at every layer are the same in any order: they are
  recorded once, and only the moving average is recomputed per order (a tenth of the cost of
  R passes). Batch Renorm reads them, and is refused (bnlab.runs.config).
- Moving average: the layer's own update, running <- running + rate (batch - running), with
  its momentum as the rate (with model.bn_momentum=null the cumulative rate 1/count, which
  makes the result independent of the order).
- Start: every order starts from the run's own final running statistics (and batch count
  less n): the real average at step N-n is not kept. With momentum m the start keeps a weight
  (1 - m)^n in the result, 1e-46 for m = 0.1 and n = 1,000 (forgotten; bnlab.runs.config refuses
  a weight above 1%).
- The model's real state (buffers, counters, random streams, evaluation modes) is restored
  afterwards (modelstate.capture/restore), and nothing runs before the last training step: the
  training history and the final model are those of the same run without it.

Rows (split 'test', one value per member): reorder_{acc,loss}_sd, the SD across orders
(R - 1 denominator) of test accuracy and loss; reorder_{acc,loss}_shift, their mean over
orders minus the value with the run's own running statistics; per norm layer
reorder_mean_ratio and reorder_log_var_ratio: the mean over units of the SD across orders of
the running mean (log running variance), divided by the SD across units of its mean over
orders (the definitions of tables.running_stats, across orders instead of across members).
"""

from __future__ import annotations

import math

import torch

from ..engine.data import Batches
from ..engine.evaluation import evaluate
from ..engine.layers import generator
from ..engine.modelstate import capture, norms, restore
from ..engine.norms import BatchRenorm


def last_batches(
    n_train: int, batch_size: int, seeds: list[int], steps: int, n: int
) -> torch.Tensor:
    """Indices (n, K, B) into the training images of every member's batches at steps
    steps-n+1 .. steps: a fresh Batches over index tensors (nothing gathered on the way)."""
    ids = torch.arange(n_train)
    batches = Batches(ids, ids, batch_size, seeds)
    for _ in range(steps - n):
        batches.next()
    return torch.stack([batches.next()[1] for _ in range(n)])


def orders(seeds: list[int], n_orders: int, n: int) -> torch.Tensor:
    """(n_orders, K, n): order o of member k is a permutation of its n batches drawn from its
    seed's stream 'reorder{o}' (reproducible, independent of the other members)."""
    return torch.stack(
        [
            torch.stack([torch.randperm(n, generator=generator(s, f"reorder{o}")) for s in seeds])
            for o in range(n_orders)
        ]
    )


@torch.no_grad()
def batch_moments(model, x: torch.Tensor, idx: torch.Tensor) -> dict:
    """One training-mode pass over member k's batches idx[t, k] (idx (n, K, B) into x), in
    order: {norm layer: (batch means, unbiased batch variances)}, each (n, K, C), what the
    layer's moving average takes in. Moves buffers, counters and streams (capture/restore)."""
    inputs = {name: model.order[model.order.index(name) - 1] for name, _ in norms(model)}
    out = {name: ([], []) for name in inputs}
    was = model.training
    model.train()
    for rows in idx.to(x.device):  # (K, B)
        record = {}
        model(x.index_select(0, rows.flatten()).view(*rows.shape, -1), record=record)
        for name, below in inputs.items():
            out[name][0].append(record[below].mean(1))
            out[name][1].append(record[below].var(1))  # unbiased, as the running variance
    model.train(was)
    return {name: (torch.stack(m), torch.stack(v)) for name, (m, v) in out.items()}


def moving_average(start: torch.Tensor, batches: torch.Tensor, order: torch.Tensor, rates):
    """start (K, C) <- start + rate_t (batches[order[..., k, t], k] - start) for t = 0..n-1:
    the running estimate after member k's batch statistics batches (n, K, C) in the orders
    order (..., K, n); (..., K, C)."""
    out = start.expand(*order.shape[:-1], -1).clone()
    members = torch.arange(order.shape[-2], device=order.device)
    for t, rate in enumerate(rates):
        out.lerp_(batches[order[..., t], members], rate)
    return out


def reorder_rows(cfg, model, data, seeds: list[int], steps: int) -> list:
    """The intervention's final rows (module docstring) after `steps` training steps, or []
    when train.reorder is 0 or the model has no batch-statistics norm layer."""
    t, layers = cfg.train, norms(model)
    n = min(t.reorder_batches, steps)
    if not t.reorder or not layers or n == 0:
        return []
    if any(isinstance(layer, BatchRenorm) for _, layer in layers):
        raise ValueError("train.reorder: Batch Renorm reads its running statistics in training")
    idx = last_batches(len(data.y_train), cfg.data.batch_size, seeds, steps, n)
    perms = orders(seeds, t.reorder, n).to(data.x_train.device)
    saved, modes = capture(model), [layer.eval_stats for _, layer in layers]
    test = (data.x_test, data.y_test, t.eval_batch)
    losses, accs, stats = [], [], {}
    try:
        batches = batch_moments(model, data.x_train, idx)
        restore(model, saved)
        for name, layer in layers:
            layer.batches_seen = max(layer.batches_seen - n, 0)
            rates = [layer.rate() for _ in range(n)]  # the weights its last n batches got
            stats[name] = [
                moving_average(start, b, perms, rates)  # (orders, K, C)
                for start, b in zip((layer.running_mean, layer.running_var), batches[name])
            ]
            layer.eval_stats = "running"
        own_loss, own_acc = evaluate(model, *test)
        for o in range(t.reorder):
            for name, layer in layers:
                layer.running_mean.copy_(stats[name][0][o])
                layer.running_var.copy_(stats[name][1][o])
            loss, acc = evaluate(model, *test)
            losses.append(loss)
            accs.append(acc)
    finally:
        restore(model, saved)
        for (_, layer), mode in zip(layers, modes):
            layer.eval_stats = mode
    rows = []
    for metric, v, own in (("acc", accs, own_acc), ("loss", losses, own_loss)):
        v = torch.stack(v)  # (orders, K)
        rows += [
            ("test", f"reorder_{metric}_sd", "", v.std(0).tolist()),
            ("test", f"reorder_{metric}_shift", "", (v.mean(0) - own).tolist()),
        ]
    for name, _ in layers:
        mean, var = (s.double() for s in stats[name])
        rows += [
            ("test", "reorder_mean_ratio", name, _ratio(mean).tolist()),
            ("test", "reorder_log_var_ratio", name, _ratio(var.log()).tolist()),
        ]
    return rows


def _ratio(v: torch.Tensor) -> torch.Tensor:
    """(orders, K, C) -> (K,): mean over units of the SD across orders / SD across units of
    the mean over orders (NaN where the units do not differ)."""
    across_orders, across_units = v.std(0).mean(1), v.mean(0).std(1)
    return torch.where(across_units > 0, across_orders / across_units, math.nan)
