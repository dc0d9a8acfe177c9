"""Compact per-member tables from collected sweeps: `bnlab tables`.

For every sweep under RESULTS/sweeps with a runs.parquet, writes RESULTS/tables/SWEEP.csv: one
row per member with the settings that vary in the sweep, its status, its final metrics and the
measures the claims report uses (below), each a single number per member. The bulky per-step
history stays in the sweep folder. Also writes running_stats.csv (C17: how much the learned BN
running statistics differ between members, from their model.pt files). A setting that an
older member's config lacks counts as its default; one set to null (model.bn_momentum=null)
is a value of its own, written as an empty cell.

The measures are the registry TABLE below: each named Measure with its columns, what it reads
(a probe's metrics, the evaluation history), its definition and the function that computes it
from the members' histories; docs/measures.md lists them, generated from it. A measure is NaN
where a member did not record what it needs; a sweep whose runs had a probe on but recorded
none of a metric the measures read is refused: a renamed metric must not turn a claim
inconclusive.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..runs import experiments
from ..runs.collect import read_tables
from ..runs.config import BATCH_STAT_NORMS, RunConfig, to_dict
from ..runs.records import atomic_path, expected_buffers, flatten, member_dir, update_manifest

TARGETS = (0.9, 0.95, 0.97)
FIT_LOSS = 0.02  # matched fit: the first evaluation with training-subset loss <= this
MATCHED_LOSS = (0.3, 0.1)  # curvature compared at the first evaluation with loss <= each
DRIFT_LAYERS = ("act1", "act2", "fc2", "fc3")  # pre-activations (BN outputs), next layers' inputs
DRIFTS = (("drift", "test"), ("train_drift", "train"))  # eval mode (activations), ics_train
CURVATURE = (("curv_lr_lambda", "all"), ("curv_gHg", "grad"), ("curv_overshoot", "grad"))
LANCZOS = ("curv_lanczos_iters", "curv_residual")  # came with the Lanczos curvature probe
SETTINGS = ("data.", "model.", "optim.", "train.")  # the config columns of a table
ALWAYS = ["model.norm", "model.activation", "optim.name", "optim.lr", "data.batch_size"]
RESULT_COLUMNS = [
    "status",
    "steps_done",
    "test_acc",
    "train_acc",
    "best_test_acc",
    "test_loss",
    "train_loss",
]


SCALAR_DEFAULTS = {  # settings with a non-null scalar default, by column name
    k: v
    for k, v in flatten(to_dict(RunConfig())).items()
    if isinstance(v, bool | int | float | str) and k not in ("name", "data.root")
}


class MissingMeasure(ValueError):
    """A sweep's runs should have recorded a metric that a measure reads, and did not."""


def _every_run(runs: pd.DataFrame) -> pd.Series:
    return pd.Series(True, index=runs.index)


def _norms(*names: str):
    return lambda runs: runs["model.norm"].isin(names)


def _configured(column: str):
    """The runs whose config has `column`: recorded by a bnlab that knows that setting."""
    return lambda runs: runs[column].notna() if column in runs else ~_every_run(runs)


def _feeds_bn(runs: pd.DataFrame) -> pd.Series:
    """The runs with a linear layer without bias right before a batch-statistics norm
    (bnlab.engine.model.scale_invariant_linears), recorded by a bnlab that has probes.scale."""

    def col(name, default):
        return runs[name] if name in runs else pd.Series(default, index=runs.index)

    out = runs["model.norm"].isin(BATCH_STAT_NORMS) & (col("model.placement", "before") == "before")
    out &= ~col("model.bias_before_norm", False).eq(True)
    out &= ~((col("model.dropout", 0.0) > 0) & (col("model.dropout_at", "") == "before_bn"))
    return out & _configured("probes.scale.every")(runs)


def _bn_configured(runs: pd.DataFrame) -> pd.Series:
    """Batch-statistics norm runs of a bnlab whose activations probe records bn_log_gain."""
    return _norms(*BATCH_STAT_NORMS)(runs) & _configured("probes.scale.every")(runs)


# history metric a measure reads -> (the probe recording it, the runs that record it)
SOURCES = {
    "w_mean_abs": ("weights", _every_run),
    "grad_mean_abs": ("grads", _every_run),
    **{f"ics{t}_{m}": ("activations", _every_run) for t in ("", "0") for m in ("kl", "mean_shift")},
    **{
        f"jac_{s}": ("jacobian", _norms("none", *BATCH_STAT_NORMS, "noise"))
        for s in ("s2_mean", "s2_var", "frac_iso", "log10_cond")
    },
    **{f"ics_grad_{m}": ("ics_grad", _every_run) for m in ("rel", "cos")},
    # the activations probe's drift rows came with probes.ics_train: older runs lack both
    **{f"drift{t}": ("activations", _configured("probes.ics_train.every")) for t in ("_prev", "0")},
    **{f"train_drift{t}": ("ics_train", _every_run) for t in ("_prev", "0")},
    "var_shift": ("mismatch", _norms(*BATCH_STAT_NORMS)),
    # the gain and cosine rows came with probes.scale: older runs lack all three
    "scale_ratio": ("scale", _feeds_bn),
    "bn_log_gain": ("activations", _bn_configured),
    "grad_w_cos": ("grads", _feeds_bn),
    "grad_z": ("grads", _configured("model.bn_group")),  # came with model.bn_group
    **{metric: ("curvature", _every_run) for metric, _ in CURVATURE},
    **{metric: ("curvature", _every_run) for metric in LANCZOS},
    **{
        f"landscape_{m}": ("landscape", _every_run)
        for m in ("loss_max", "loss_min", "beta", "grad_diff_max")
    },
}


def check_sources(runs: pd.DataFrame, history: pd.DataFrame, sweep: str) -> None:
    """Raise MissingMeasure for a metric of SOURCES that no member recorded although some
    member ran its probe (on, and due within the steps it trained)."""
    recorded = set(history["metric"].unique()) if len(history) else set()
    for metric, (probe, records) in SOURCES.items():
        every = runs.get(f"probes.{probe}.every")
        if every is None or metric in recorded:
            continue
        due = (every > 0) & (every <= runs["steps_done"]) & records(runs)
        if due.any():
            raise MissingMeasure(
                f"{sweep}: no member recorded metric {metric!r} although probes.{probe} was on "
                f"in {int(due.sum())} members; the probe or the measure was renamed: make "
                "bnlab/analysis/tables.py and bnlab/measurement/probes/ agree"
            )
    shifts = runs.get("train.shifts", pd.Series(None, index=runs.index, dtype=object))
    due = shifts.notna() & shifts.astype(str).ne("[]") & (runs["status"] == "finished")
    if due.any() and "shift_acc_running" not in recorded:  # the shift evaluation's final rows
        raise MissingMeasure(
            f"{sweep}: no member recorded metric 'shift_acc_running' although train.shifts "
            "was set; make bnlab/analysis/tables.py and bnlab/measurement/shift.py (shift_rows) "
            "agree"
        )
    reorder = runs.get("train.reorder")  # the batch-order intervention's final rows
    if reorder is not None and "reorder_acc_sd" not in recorded:
        due = (reorder > 0) & runs["model.norm"].isin(BATCH_STAT_NORMS)
        if (due & (runs["status"] == "finished")).any():
            raise MissingMeasure(
                f"{sweep}: no member recorded metric 'reorder_acc_sd' although train.reorder "
                "was on; make bnlab/analysis/tables.py and bnlab/measurement/reorder.py agree"
            )


def _mean_over_probes(
    h: pd.DataFrame,
    metric: str,
    layer: str,
    split: str,
    upto=None,
    absolute: bool = False,
    after: pd.Series | None = None,
    stat: str = "mean",
):
    """Per member, the mean (or another `stat`: "max") of `metric` (of |metric| with absolute)
    over probes after step 0 (up to step `upto`; after the member's step in `after`, a Series
    by run and seed)."""
    rows = h[(h["metric"] == metric) & (h["layer"] == layer) & (h["split"] == split)]
    rows = rows[rows["step"] > 0]
    if upto is not None:
        rows = rows[rows["step"] <= upto]
    if after is not None:
        rows = rows.join(after.rename("after"), on=["run", "seed"])
        rows = rows[rows["step"] > rows["after"]]
    values = rows["value"].abs() if absolute else rows["value"]
    return values.groupby([rows["run"], rows["seed"]]).agg(stat)


def _at(h: pd.DataFrame, metric: str, layer: str, split: str, last: bool):
    rows = h[(h["metric"] == metric) & (h["layer"] == layer) & (h["split"] == split)]
    rows = rows.sort_values("step")
    g = rows.groupby(["run", "seed"])["value"]
    return g.last() if last else g.first()


def _spread_over_probes(h: pd.DataFrame, layer: str) -> pd.Series:
    """Mean over probes after step 0 of var(s^2) / mean(s^2)^2: the spread of the squared
    singular values relative to their level, free of the layer's gain."""
    rows = h[(h["split"] == "test") & (h["layer"] == layer) & (h["step"] > 0)]
    wide = rows[rows["metric"].isin(["jac_s2_var", "jac_s2_mean"])].pivot_table(
        index=["run", "seed", "step"], columns="metric", values="value"
    )
    if wide.empty:
        return pd.Series(dtype=float)
    spread = _spread(wide["jac_s2_var"], wide["jac_s2_mean"])
    return spread.groupby(["run", "seed"]).mean()


def _spread(var: pd.Series, mean: pd.Series) -> pd.Series:
    """var(s^2) / mean(s^2)^2; NaN where the variance underflowed float32 to 0 (s^2 ~ 1e-35 in
    a deep sigmoid network: the recorded var says nothing about the spread there)."""
    return (var / mean**2).where(var > 0)


def _fit_steps(h: pd.DataFrame, threshold: float) -> pd.Series:
    """Per member, the first evaluation step whose training-subset loss (eval mode) is at most
    `threshold` (members that never get there are absent)."""
    loss = h[(h["split"] == "train") & (h["metric"] == "loss") & (h["layer"] == "")]
    return loss[loss["value"] <= threshold].groupby(["run", "seed"])["step"].min()


def _at_steps(h: pd.DataFrame, steps: pd.Series, metric: str, layer: str, split: str):
    """Per member, `metric` (of `split`, `layer`) at that member's step in `steps`."""
    rows = h[(h["metric"] == metric) & (h["layer"] == layer) & (h["split"] == split)]
    at = rows.set_index(["run", "seed", "step"])["value"]
    return at.reindex(steps.reset_index().set_index(["run", "seed", "step"]).index).droplevel(
        "step"
    )


def _at_fit(h: pd.DataFrame, threshold: float) -> dict[str, pd.Series]:
    """Per member, at the first evaluation whose training-subset loss is at most `threshold`:
    that step, the test loss and accuracy and the train-test accuracy gap there."""
    steps = _fit_steps(h, threshold)
    test_acc = _at_steps(h, steps, "acc", "", "test")
    return {
        "fit_step": steps,
        "test_loss_at_fit": _at_steps(h, steps, "loss", "", "test"),
        "test_acc_at_fit": test_acc,
        "gap_at_fit": _at_steps(h, steps, "acc", "", "train") - test_acc,
    }


def _at_loss(h: pd.DataFrame, metric: str, layer: str, threshold: float) -> pd.Series:
    """Per member, `metric` (split train, `layer`) at the first evaluation whose training-subset
    loss is at most `threshold` (arms compared at matched training loss, not matched step)."""
    return _at_steps(h, _fit_steps(h, threshold), metric, layer, "train")


def widths_of(value) -> list:
    """model.widths as collected: a list, an array or its string form."""
    return list(ast.literal_eval(value)) if isinstance(value, str) else list(value)


def init_jacobian(h: pd.DataFrame, layer: str = "hidden") -> pd.DataFrame:
    """Per member, the Jacobian of `layer` at initialisation (step 0) as in training: with BN,
    the train-mode variant (jac_batchstat_*: the batch's own statistics); without a batch-
    statistics norm the eval-mode map is the same map. Columns gain (mean s^2) and spread
    (var(s^2) / mean(s^2)^2)."""
    rows = h[(h["step"] == 0) & (h["layer"] == layer) & (h["split"] == "test")]
    wide = rows.pivot_table(index=["run", "seed"], columns="metric", values="value")
    out = pd.DataFrame(index=wide.index)
    for prefix in ("jac", "jac_batchstat"):  # the train-mode value wins where it exists
        if f"{prefix}_s2_mean" in wide:
            mean, var = wide[f"{prefix}_s2_mean"], wide[f"{prefix}_s2_var"]
            out["gain"] = mean.combine_first(out["gain"]) if "gain" in out else mean
            spread = _spread(var, mean)
            out["spread"] = spread.combine_first(out["spread"]) if "spread" in out else spread
    return out


def _varies(values: pd.Series) -> bool:
    """Whether a setting takes several values; a null counts as one of them where the
    setting's default is not null (a setting whose default is null, such as model.placement,
    is null where it means nothing: that alone does not make it vary)."""
    null = values.map(lambda v: v is None or v is pd.NA or (isinstance(v, float) and v != v))
    keys = values.map(str).where(~null.astype(bool), None)
    return keys.nunique(dropna=values.name not in SCALAR_DEFAULTS) > 1


def measures(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """One row per member of `runs`: varying settings, results and the measures of TABLE. A
    setting missing from an older member's config counts as its default (as resume reads it),
    so a new setting varies against the members trained before it existed; one its config
    sets to null (runs' null_settings) stays null, a value of its own (empty in the CSV)."""
    runs = runs.copy()
    nulls = runs.get("null_settings", pd.Series("", index=runs.index)).fillna("").str.split(",")
    for c, default in SCALAR_DEFAULTS.items():
        if c in runs:
            missing = runs[c].isna() & ~nulls.map(lambda keys, c=c: c in keys)
            runs[c] = runs[c].mask(missing, default)
    varying = [c for c in runs.columns if "." in c and c != "data.root" and _varies(runs[c])]
    config = list(dict.fromkeys([c for c in ALWAYS if c in runs] + varying))
    modes = [c for c in runs.columns if c.startswith(("test_acc_", "test_loss_"))]
    out = runs[["run", "seed", *config, *RESULT_COLUMNS, *modes]].set_index(["run", "seed"])
    inputs = Inputs(history, out, runs.set_index(["run", "seed"]))
    cols = {
        name: values.reindex(out.index)
        for measure, name, values in measure_columns(inputs)
        if measure.always or len(values)
    }
    return pd.concat([out, pd.DataFrame(cols, index=out.index)], axis=1).reset_index()


def _at_or_before(h: pd.DataFrame, steps: pd.Series, metric: str, layer: str, split: str):
    """Per member, `metric` at its last record at or before the member's step in `steps`."""
    rows = h[(h["metric"] == metric) & (h["layer"] == layer) & (h["split"] == split)]
    rows = rows.join(steps.rename("upto"), on=["run", "seed"])
    rows = rows[rows["step"] <= rows["upto"]].sort_values("step")
    return rows.groupby(["run", "seed"])["value"].last()


def agrad_log_ratio(h: pd.DataFrame) -> pd.DataFrame:
    """Per member and grads probe after step 0: log10 of grad_z (the mean per-example
    ||dL/dz|| at a hidden layer's pre-activation) at the first hidden layer over that at the
    member's last hidden layer. Columns run, seed, step, ratio."""
    rows = h[(h["metric"] == "grad_z") & (h["split"] == "train") & (h["step"] > 0)]
    if rows.empty:
        return pd.DataFrame(columns=["run", "seed", "step", "ratio"])
    wide = rows.pivot_table(index=["run", "seed", "step"], columns="layer", values="value")
    wide = wide[sorted(wide.columns, key=lambda name: int(name[3:]))]  # act1, act2, ...
    deepest = wide.ffill(axis=1).iloc[:, -1]  # each member's last hidden layer
    return np.log10(wide["act1"] / deepest).rename("ratio").reset_index()


def activation_gradients(h: pd.DataFrame) -> dict[str, pd.Series]:
    """Per member, agrad_log_ratio at the first probe after step 0 (agrad_log_ratio_first:
    with probes.grads.every=1, step 1's backward at the initial weights) and averaged over the
    probes of steps 1-1,000 (agrad_log_ratio_1k). 0: the gradient reaches the first layer
    undiminished; negative: it vanishes on the way down; positive: it grows (explodes)."""
    ratio = agrad_log_ratio(h).sort_values("step")
    if ratio.empty:
        return {}
    early = ratio[ratio["step"] <= 1000].groupby(["run", "seed"])["ratio"]
    return {
        "agrad_log_ratio_first": ratio.groupby(["run", "seed"])["ratio"].first(),
        "agrad_log_ratio_1k": early.mean(),
    }


def shift_columns(h: pd.DataFrame) -> dict[str, pd.Series]:
    """shift_{acc,loss}_MODE_ENTRY: the covariate-shift evaluation (train.shifts,
    bnlab.measurement.shift) of each member, one column per mode and shifted test set."""
    rows = h[h["metric"].str.startswith("shift_") & (h["split"] == "test")]
    return {
        f"{metric}_{entry}": g.set_index(["run", "seed"])["value"]
        for (metric, entry), g in rows.groupby(["metric", "layer"])
    }


def equivalence(table: pd.DataFrame, h: pd.DataFrame) -> pd.DataFrame:
    """Where a sweep scales the weights feeding BN (model.invariant_init_scale), each member
    against the member of the same seed and other settings (all but the scale, its lr scale
    and BN's eps) with the weights unscaled (C20): the largest relative
    difference over every evaluation of the test and training-subset loss
    (equiv_max_rel_loss), the largest absolute difference of test accuracy (equiv_max_acc),
    and whether every evaluation's loss and accuracy is bit for bit the same (equiv_exact)."""
    scale = "model.invariant_init_scale"
    if scale not in table or table[scale].nunique() < 2:
        return pd.DataFrame(index=table.index)
    ev = h[
        (h["layer"] == "") & h["metric"].isin(["loss", "acc"]) & h["split"].isin(["test", "train"])
    ]
    ev = ev.pivot_table(index=["run", "seed"], columns=["split", "metric", "step"], values="value")
    rescaling = (scale, "optim.invariant_lr_scale", "model.bn_eps")  # what a version changes
    same = ["seed", *(c for c in table if c.startswith(SETTINGS) and c not in rescaling)]
    refs = table[table[scale] == 1.0].astype({c: str for c in same[1:]})
    refs = refs.drop_duplicates(same, keep=False).set_index(same)["run"]
    out = []
    for _, row in table.astype({c: str for c in same[1:]}).iterrows():
        match = tuple(row[same]) if len(same) > 1 else row["seed"]
        key, ref = (row["run"], row["seed"]), refs.get(match)
        if ref is None or key not in ev.index or (ref, row["seed"]) not in ev.index:
            out.append({})
            continue
        a, b = ev.loc[key], ev.loc[(ref, row["seed"])]
        loss = (a.xs("loss", level="metric") - b.xs("loss", level="metric")).abs()
        rel = loss / b.xs("loss", level="metric").abs()
        acc = (a.xs("acc", level="metric") - b.xs("acc", level="metric")).abs()
        out.append(
            {
                "equiv_max_rel_loss": rel.max(),
                "equiv_max_acc": acc.xs("test", level="split").max(),
                "equiv_exact": bool((a == b).all()),
            }
        )
    return pd.DataFrame(out, index=table.index)


# --------------------------------------------------------------------------- the measures
class Inputs(NamedTuple):
    """What the measures are computed from: every member's history rows (h), and per member,
    indexed by (run, seed), the table's settings and results (table) and every collected
    column of the runs table (runs)."""

    h: pd.DataFrame
    table: pd.DataFrame
    runs: pd.DataFrame


@dataclass(frozen=True)
class Measure:
    """A named measure of the tables. `name` gives its columns, a comma-separated list of
    patterns in which {a,b} stands for each of a and b, and MODE and ENTRY for a name; `reads`
    says what it is computed from; `definition` what it is. `columns` computes its columns,
    {column: value by (run, seed)}, from the Inputs, or from the Inputs and a layer for each of
    `layers` where it has them. A column appears where some member has a value for it; one of
    an `always` measure is in every table, NaN for the members without a value."""

    name: str
    reads: str
    definition: str
    columns: Callable[..., dict[str, pd.Series]]
    layers: tuple[str, ...] = ()
    always: bool = False


def _alts(values) -> str:
    return "{" + ",".join(f"{v:g}" if isinstance(v, float) else v for v in values) + "}"


def _steps_to(d: Inputs) -> dict[str, pd.Series]:
    h, out = d.h, {}
    acc = h[(h["metric"] == "acc") & (h["split"] == "test") & (h["layer"] == "")]
    for t in TARGETS:
        first = acc[acc["value"] >= t].groupby(["run", "seed"])["step"].min()
        out[f"reached_{t}"] = first.reindex(d.table.index).notna()
        out[f"steps_to_{t}"] = first.reindex(d.table.index).fillna(d.table["steps_done"] + 1)
    return out


def _depth(d: Inputs) -> dict[str, pd.Series]:
    if "model.widths" not in d.runs:
        return {}
    depth = [len(widths_of(w)) for w in d.runs["model.widths"]]
    return {"depth": pd.Series(depth, index=d.runs.index)}


def _jacobian(d: Inputs) -> dict[str, pd.Series]:
    return {
        f"jac_{stat}_{layer}": _mean_over_probes(d.h, f"jac_{stat}", layer, "test")
        for stat in ("s2_mean", "frac_iso", "log10_cond")
        for layer in ("fc1", "fc2", "hidden")
    }


def _curvature(d: Inputs) -> dict[str, pd.Series]:
    cols = {}
    for metric, layer in CURVATURE:
        cols[f"{metric}_mean"] = _mean_over_probes(d.h, metric, layer, "train")
        for loss in MATCHED_LOSS:
            cols[f"{metric}_at_{loss:g}"] = _at_loss(d.h, metric, layer, loss)
    return cols


def _drift(prefix: str, split: str) -> Callable[[Inputs], dict[str, pd.Series]]:
    def columns(d: Inputs) -> dict[str, pd.Series]:
        h, cols = d.h, {}
        if f"{prefix}_prev" not in set(h["metric"]):
            return cols  # not recorded (an older sweep, or ics_train off): no columns of NaN
        prev, since0 = f"{prefix}_prev", f"{prefix}0"
        fits = {loss: _fit_steps(h, loss) for loss in MATCHED_LOSS}
        for layer in DRIFT_LAYERS:
            cols[f"{prev}_{layer}"] = _mean_over_probes(h, prev, layer, split)
            cols[f"{prev}_{layer}_final"] = _at(h, prev, layer, split, last=True)
            cols[f"{since0}_{layer}_final"] = _at(h, since0, layer, split, last=True)
            for loss, steps in fits.items():
                for m in (prev, since0):
                    cols[f"{m}_{layer}_at_{loss:g}"] = _at_steps(h, steps, m, layer, split)
        return cols

    return columns


def _landscape(d: Inputs, early: bool) -> dict[str, pd.Series]:
    done = d.runs["steps_done"].dropna()  # none where every member is corrupt or unfinished
    upto = (done.max() if len(done) else 0) / 4 if early else None
    suffix = "_early" if early else ""
    lmax = _mean_over_probes(d.h, "landscape_loss_max", "grad", "train", upto)
    lmin = _mean_over_probes(d.h, "landscape_loss_min", "grad", "train", upto)
    cols = {f"landscape_loss_range{suffix}": lmax - lmin}
    for m in ("beta", "grad_diff_max"):
        cols[f"landscape_{m}{suffix}"] = _mean_over_probes(
            d.h, f"landscape_{m}", "grad", "train", upto
        )
    return cols


def _half(d: Inputs) -> pd.Series:
    return (d.runs["steps_done"] / 2).rename("step")


def _feeding_bn(metric: str, name: str) -> Callable[[Inputs, str], dict[str, pd.Series]]:
    """`metric` of a layer feeding BN at the end and at the last probe at or before half the
    run: columns NAME_LAYER_final and NAME_LAYER_half."""
    return lambda d, layer: {
        f"{name}_{layer}_final": _at(d.h, metric, layer, "train", last=True),
        f"{name}_{layer}_half": _at_or_before(d.h, _half(d), metric, layer, "train"),
    }


_X, _L_DRIFT = _alts(MATCHED_LOSS), _alts(DRIFT_LAYERS)
_CURV = "curv_" + _alts(m.removeprefix("curv_") for m, _ in CURVATURE)
_DRIFT_NAME = (
    "{p}_prev_{L}, {p}_prev_{L}_final, {p}0_{L}_final, {p}_prev_{L}_at_{X}, {p}0_{L}_at_{X}"
)

# The measures in the table's column order. A tuple holds measures of the same layers whose
# columns come layer by layer (ics_grad_rel_fc2, ics_grad_cos_fc2, ics_kl_fc2, ...). Unless
# said otherwise a probe metric is averaged over the probes after step 0; a column is NaN
# where a member did not record what it reads.
TABLE = (
    Measure(
        "gap",
        "the final evaluation: `train_acc`, `test_acc`",
        "final train accuracy - test accuracy",
        lambda d: {"gap": d.table["train_acc"] - d.table["test_acc"]},
        always=True,
    ),
    Measure(
        f"reached_{_alts(TARGETS)}, steps_to_{_alts(TARGETS)}",
        "evaluation history: test `acc`",
        "`steps_to_T`: the first evaluated step with test accuracy >= T; a member that never "
        "reaches it gets steps_done + 1, and `reached_T` is false",
        _steps_to,
        always=True,
    ),
    Measure(
        "fit_step, test_loss_at_fit, test_acc_at_fit, gap_at_fit",
        "evaluation history: train and test `loss` and `acc`",
        f"at the first evaluation whose training-subset loss is <= {FIT_LOSS:g} (matched fit): "
        "that step, the test loss and accuracy and the train - test accuracy gap there; "
        "compared at matched fit, a regulariser shows as a lower test loss. NaN if never reached",
        lambda d: {
            name: series.reindex(d.table.index).astype(float)
            for name, series in _at_fit(d.h, FIT_LOSS).items()
        },
        always=True,
    ),
    Measure(
        "depth",
        "the setting `model.widths`",
        "the number of hidden layers",
        _depth,
        always=True,
    ),
    Measure(
        "valid_acc, valid_loss",
        "evaluation history: valid `acc`, `loss`",
        "accuracy and loss at the last evaluation on the held-out images (`data.eval_holdout`)",
        lambda d: {
            "valid_acc": _at(d.h, "acc", "", "valid", last=True),
            "valid_loss": _at(d.h, "loss", "", "valid", last=True),
        },
    ),
    Measure(
        "w2_mean_abs_start, w2_mean_abs_final",
        "`weights` probe: `w_mean_abs` (fc2)",
        "mean |W2| at step 0 and at the last probe (the 2017 study's Fig. 1)",
        lambda d: {
            "w2_mean_abs_start": _at(d.h, "w_mean_abs", "fc2", "train", last=False),
            "w2_mean_abs_final": _at(d.h, "w_mean_abs", "fc2", "train", last=True),
        },
    ),
    Measure(
        "grad1_mean_abs_1k",
        "`grads` probe: `grad_mean_abs` (fc1)",
        "mean over steps 1 to 1,000 of mean |dL/dW1| (the 2017 study's Fig. 2)",
        lambda d: {
            "grad1_mean_abs_1k": _mean_over_probes(d.h, "grad_mean_abs", "fc1", "train", 1000)
        },
    ),
    Measure(
        "ics0_mean_shift_fc3_final",
        "`activations` probe: `ics0_mean_shift` (fc3)",
        "drift of the input of layer 3 since step 0, at the last probe",
        lambda d: {"ics0_mean_shift_fc3_final": _at(d.h, "ics0_mean_shift", "fc3", "test", True)},
    ),
    Measure(
        "jac_{s2_mean,frac_iso,log10_cond}_{fc1,fc2,hidden}",
        "`jacobian` probe: `jac_s2_mean`, `jac_frac_iso`, `jac_log10_cond`",
        "the per-sample Jacobian summaries: mean s^2, the fraction of s in [1/2, 2] and the mean "
        "log10(s_max / s_min), of each layer's Jacobian and the end-to-end one of the hidden "
        "layers (`hidden`)",
        _jacobian,
    ),
    Measure(
        "jac_spread_{fc1,fc2,hidden}",
        "`jacobian` probe: `jac_s2_var`, `jac_s2_mean`",
        "var(s^2)/mean(s^2)^2: the singular values' spread, separate from the gain mean(s^2) "
        "(`jac_s2_mean`)",
        lambda d: {
            f"jac_spread_{layer}": _spread_over_probes(d.h, layer)
            for layer in ("fc1", "fc2", "hidden")
        },
    ),
    Measure(
        "init_jac_{gain,spread}_hidden",
        "`jacobian` probe at step 0: `jac_batchstat_s2_mean`, `jac_batchstat_s2_var` where "
        "recorded, else `jac_s2_mean`, `jac_s2_var` (hidden)",
        "the hidden layers' end-to-end Jacobian at step 0 as in training (BN with the batch's "
        "own statistics): mean s^2 (gain) and var(s^2)/mean(s^2)^2 (spread)",
        lambda d: {f"init_jac_{k}_hidden": v for k, v in init_jacobian(d.h).items()},
    ),
    Measure(
        "curv_" + _alts(m.removeprefix("curv_") for m in LANCZOS) + "_max",
        "`curvature` probe: `curv_lanczos_iters`, `curv_residual` (all)",
        "the most Lanczos steps and the largest relative residual of any probe's "
        "top-eigenvalue estimate: how far the estimates converged, at worst",
        lambda d: {
            f"{m}_max": _mean_over_probes(d.h, m, "all", "train", stat="max") for m in LANCZOS
        },
    ),
    Measure(
        f"{_CURV}_mean, {_CURV}_at_{_X}",
        "`curvature` probe: `curv_lr_lambda` (all), `curv_gHg`, `curv_overshoot` (grad); "
        "evaluation history: train `loss`",
        "the curvature probe's lr x lambda_max, g'Hg/||g||^2 and overshoot D: `_mean` over "
        "the run; `_at_X` at the first evaluation whose training-subset loss is <= X, arms "
        "compared at matched training loss (NaN if never reached)",
        _curvature,
    ),
    (
        Measure(
            "ics_grad_{rel,cos}_{fc2,fc3}",
            "`ics_grad` probe: `ics_grad_rel`, `ics_grad_cos`",
            "gradient ICS (Santurkar et al. 2018): the relative change and the cosine of a "
            "layer's gradient when the layers below it take their step",
            lambda d, layer: {
                f"ics_grad_{m}_{layer}": _mean_over_probes(d.h, f"ics_grad_{m}", layer, "train")
                for m in ("rel", "cos")
            },
            layers=("fc2", "fc3"),
        ),
        Measure(
            "ics_{kl,mean_shift}_{fc2,fc3}",
            "`activations` probe: `ics_kl`, `ics_mean_shift`",
            "distributional ICS between probes: the Gaussian KL divergence and the mean shift "
            "of a layer's input, per unit and averaged over units",
            lambda d, layer: {
                f"ics_{m}_{layer}": _mean_over_probes(d.h, f"ics_{m}", layer, "test")
                for m in ("kl", "mean_shift")
            },
            layers=("fc2", "fc3"),
        ),
    ),
    (
        Measure(
            "var_shift_{bn1,bn2}_final",
            "`mismatch` probe: `var_shift`",
            "dropout's variance shift (Li et al. 2019) at the last probe",
            lambda d, layer: {
                f"var_shift_{layer}_final": _at(d.h, "var_shift", layer, "train", last=True)
            },
            layers=("bn1", "bn2"),
        ),
        Measure(
            "reorder_{mean,log_var}_ratio_{bn1,bn2}",
            "the batch-order intervention's final rows: `reorder_mean_ratio`, "
            "`reorder_log_var_ratio`",
            "the batch-order intervention (`train.reorder`): mean over units of the SD across "
            "orders of the running mean, divided by the SD across units of its mean over the "
            "orders; the same for the log of the running variance",
            lambda d, layer: {
                f"reorder_{s}_ratio_{layer}": _at(d.h, f"reorder_{s}_ratio", layer, "test", True)
                for s in ("mean", "log_var")
            },
            layers=("bn1", "bn2"),
        ),
    ),
    Measure(
        "reorder_{acc,loss}_{sd,shift}",
        "the batch-order intervention's final rows: `reorder_acc_sd`, `reorder_acc_shift`, "
        "`reorder_loss_sd`, `reorder_loss_shift`",
        "the batch-order intervention (`train.reorder`): the SD across orders of test accuracy "
        "and loss, and their mean over the orders minus the value with the run's own running "
        "statistics; only for runs with `train.reorder` and a batch-statistics norm",
        lambda d: {
            f"reorder_{m}": _at(d.h, f"reorder_{m}", "", "test", last=True)
            for m in ("acc_sd", "acc_shift", "loss_sd", "loss_shift")
        },
    ),
    Measure(
        _DRIFT_NAME.format(p="drift", L=_L_DRIFT, X=_X),
        "`activations` probe: `drift_prev`, `drift0`; evaluation history: train `loss`",
        "scale-free drift of the input of layer L (act1, act2: pre-activations; fc2, fc3) in "
        "eval mode on the test probe batch: between consecutive probes (`drift_prev_L`) and at "
        "the last probe (`_final`), since step 0 at the last probe (`drift0_L_final`); `_at_X` "
        "at the first evaluation whose training-subset loss is <= X: BN and no BN compared at "
        "matched training loss rather than matched step (NaN if never reached, or if that "
        "evaluation step is not also an `activations` probe step)",
        _drift("drift", "test"),
    ),
    Measure(
        _DRIFT_NAME.format(p="train_drift", L=_L_DRIFT, X=_X),
        "`ics_train` probe: `train_drift_prev`, `train_drift0`; evaluation history: train `loss`",
        "the drift measures above from the `ics_train` probe: training mode (noise and BN batch "
        "statistics on), training probe batch",
        _drift("train_drift", "train"),
    ),
    Measure(
        "landscape_{loss_range,beta,grad_diff_max}",
        "`landscape` probe: `landscape_loss_max`, `landscape_loss_min`, `landscape_beta`, "
        "`landscape_grad_diff_max` (grad)",
        "landscape measures along the gradient: the loss range (max - min of the loss), the "
        "effective beta-smoothness and the largest gradient difference",
        lambda d: _landscape(d, early=False),
    ),
    Measure(
        "landscape_{loss_range,beta,grad_diff_max}_early",
        "`landscape` probe, as `landscape_*`",
        "the same over the first quarter of the run only (of the sweep's longest member)",
        lambda d: _landscape(d, early=True),
    ),
    (
        Measure(
            "scale_ratio_{fc1,fc2}",
            "`scale` probe: `scale_ratio`",
            "(||W_T||^2 - ||W_0||^2) / sum_t lr^2 ||g_t||^2 at the last scale probe: 1 where "
            "scale invariance makes the weights grow by the squared SGD steps alone (plain SGD "
            "only, else NaN; a linear layer without bias feeding BN)",
            lambda d, layer: {
                f"scale_ratio_{layer}": _at(d.h, "scale_ratio", layer, "train", last=True)
            },
            layers=("fc1", "fc2"),
        ),
        Measure(
            "scale_growth_rel_{fc1,fc2}",
            "`scale` probe: `scale_w2_growth_rel`",
            "(||W_T||^2 - ||W_0||^2) / ||W_0||^2 at the last scale probe",
            lambda d, layer: {
                f"scale_growth_rel_{layer}": _at(d.h, "scale_w2_growth_rel", layer, "train", True)
            },
            layers=("fc1", "fc2"),
        ),
        Measure(
            "grad_w_cos_abs_{fc1,fc2}, grad_w_cos_unit_abs_{fc1,fc2}",
            "`grads` probe: `grad_w_cos`, `grad_w_cos_unit_abs`",
            "|cos(W, dL/dW)| over the layer, and the mean over units of |cos(w_j, dL/dw_j)|, "
            "of the weights feeding BN: 0 under exact scale invariance",
            lambda d, layer: {
                f"grad_w_cos_abs_{layer}": _mean_over_probes(
                    d.h, "grad_w_cos", layer, "train", absolute=True
                ),
                f"grad_w_cos_unit_abs_{layer}": _mean_over_probes(  # already |.| per unit
                    d.h, "grad_w_cos_unit_abs", layer, "train"
                ),
            },
            layers=("fc1", "fc2"),
        ),
    ),
    Measure(
        "bn_log_gain_{bn1,bn2}_{start,final}",
        "`activations` probe: `bn_log_gain`",
        "mean over units of log10(|gamma| / sqrt(var_B + eps)), BN's gain with the batch "
        "statistics of the training probe batch, at step 0 and at the last `activations` probe",
        lambda d: {
            f"bn_log_gain_{layer}_{suffix}": _at(d.h, "bn_log_gain", layer, "train", last)
            for layer in ("bn1", "bn2")
            for suffix, last in (("start", False), ("final", True))
        },
    ),
    Measure(
        "agrad_log_ratio_first, agrad_log_ratio_1k",
        "`grads` probe: `grad_z` (act*)",
        "log10 of the activation-space gradient `grad_z` at the first hidden layer over the "
        "last: at the first `grads` probe after step 0 (the initial weights' gradient when "
        "`probes.grads.every` is 1, as in yang2019_depth) and averaged over steps 1-1,000. 0: "
        "the gradient reaches the first layer undiminished; negative: it vanishes on the way "
        "down; positive: it grows",
        lambda d: activation_gradients(d.h),
    ),
    (
        Measure(
            "eff_lr_{fc1,fc2}_{final,half}",
            "`weights` probe: `lr_over_w2`",
            "the effective learning rate lr/||w_j||^2 (mean over units) of the weights feeding "
            "BN, at the end and at the last probe at or before half the run",
            _feeding_bn("lr_over_w2", "eff_lr"),
            layers=("fc1", "fc2"),
        ),
        Measure(
            "w_fro_{fc1,fc2}_{final,half}",
            "`weights` probe: `w_fro`",
            "||W|| of the weights feeding BN, at the end and at the last probe at or before "
            "half the run",
            _feeding_bn("w_fro", "w_fro"),
            layers=("fc1", "fc2"),
        ),
        Measure(
            "angular_step_{fc1,fc2}_late",
            "`weights` probe: `angular_step`",
            "of the weights feeding BN, the angle (radians, mean over units) one step turns "
            "w_j, averaged over the probes of the run's last quarter",
            lambda d, layer: {
                f"angular_step_{layer}_late": _mean_over_probes(
                    d.h, "angular_step", layer, "train", after=_half(d) * 1.5
                )
            },
            layers=("fc1", "fc2"),
        ),
    ),
    Measure(
        "shift_{acc,loss}_MODE_ENTRY",
        "the covariate-shift evaluation's final rows: `shift_acc_MODE`, `shift_loss_MODE`",
        "the covariate-shift evaluation (`train.shifts`): test accuracy and loss in each mode "
        "(running, adapted, batch) on each shifted test set (ENTRY: `clean` or KIND:STRENGTH)",
        lambda d: shift_columns(d.h),
    ),
    Measure(
        "equiv_max_rel_loss, equiv_max_acc, equiv_exact",
        "evaluation history: test and train `loss`, `acc`",
        "where `model.invariant_init_scale` varies, each member against the member of its seed "
        "and other settings with the weights unscaled: the largest relative difference of the "
        "test and training-subset loss over every evaluation, the largest test-accuracy "
        "difference, and whether every evaluation agrees bit for bit",
        lambda d: dict(equivalence(d.table.reset_index(), d.h).set_axis(d.table.index).items()),
    ),
)
MEASURES = [m for entry in TABLE for m in (entry if isinstance(entry, tuple) else (entry,))]


def measure_columns(d: Inputs):
    """(measure, column, values by (run, seed)) for every column the measures compute, in the
    table's order (empty ones included)."""
    for entry in TABLE:
        group = entry if isinstance(entry, tuple) else (entry,)
        for layer in group[0].layers or [None]:
            for measure in group:
                cols = measure.columns(d) if layer is None else measure.columns(d, layer)
                for name, values in cols.items():
                    yield measure, name, values


def _load_states(run_dir: Path, seeds: list[int]) -> tuple[dict, dict]:
    """The running statistics of each member's model.pt: ({seed: {name: tensor}}, {seed:
    why it is unusable}). Unusable: unreadable, not a state dict, or other running-statistic
    names or shapes than the run's config builds (or, without one, most members hold)."""
    states, bad = {}, {}
    for seed in seeds:
        path = member_dir(run_dir, seed) / "model.pt"
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:  # truncated, foreign or not a pickle: torch raises many kinds
            why = " ".join(str(e).split())[:120]
            bad[seed] = f"{path}: unreadable ({type(e).__name__}: {why})"
            continue
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            bad[seed] = f"{path}: not a state dict of tensors"
            continue
        states[seed] = {k: v for k, v in state.items() if ".running_" in k}
    shapes = {s: {(k, tuple(v.shape)) for k, v in st.items()} for s, st in states.items()}
    usual = expected_buffers(run_dir) if shapes else None
    if usual is None and shapes:
        usual = max(shapes.values(), key=list(shapes.values()).count)
    for seed in [s for s, sh in shapes.items() if sh != usual]:
        path = member_dir(run_dir, seed) / "model.pt"
        bad[seed] = f"{path}: other keys or shapes than its run's config builds"
        del states[seed]
    return states, bad


def running_stats(sweep_dir: Path, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per run and BN layer: how much the final running mean and variance differ between the
    run's finished members (the members of the runs table), relative to how much they differ
    between units; and {(run, seed): why} for members whose model.pt is unusable (left out).

    member_sd: mean over units of the SD across members; unit_sd: SD across units of the
    members' average. Variances are compared on a log scale."""
    rows, corrupt = [], {}
    finished = runs[runs["status"] == "finished"]
    for run, members in finished.groupby("run"):
        loaded, bad = _load_states(sweep_dir / run, [int(s) for s in sorted(members["seed"])])
        corrupt.update({(run, seed): why for seed, why in bad.items()})
        states = list(loaded.values())
        if len(states) < 2:
            continue
        for key in sorted(k for k in states[0] if k.endswith("running_mean")):
            layer = key.split(".")[0]
            for stat, name in (("mean", key), ("log_var", key.replace("mean", "var"))):
                if name not in states[0]:
                    continue
                v = torch.stack([s[name] for s in states]).double()  # (members, units)
                v = v.log() if stat == "log_var" else v
                member_sd = v.std(0).mean().item()
                unit_sd = v.mean(0).std().item()
                rows.append(
                    {
                        "run": run,
                        "layer": layer,
                        "stat": stat,
                        "members": len(states),
                        "member_sd": member_sd,
                        "unit_sd": unit_sd,
                        "ratio": member_sd / unit_sd if unit_sd > 0 else np.nan,
                    }
                )
    return pd.DataFrame(rows), corrupt


HISTORY_KEY = ["run", "seed", "split", "metric", "layer", "step"]


def _members(df: pd.DataFrame) -> pd.MultiIndex:
    """(run, seed) of each row, seeds as integers."""
    return pd.MultiIndex.from_frame(df[["run", "seed"]].astype({"seed": "int64"}))


def sweep_table(sweep: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(the sweep's table, its running_stats rows, a line per corrupt member). A member whose
    history repeats a row or whose model.pt is unusable is a 'corrupt' row (its measures left
    out of the others'); FileNotFoundError if not collected, ValueError/OSError if unreadable."""
    runs, history = read_tables(sweep)
    runs = runs[runs["seed"].notna()]
    check_sources(runs, history, sweep.name)
    dup = history.duplicated(HISTORY_KEY, keep=False)
    bad = {
        tuple(k): "history.parquet: repeated rows"
        for k in history.loc[dup, ["run", "seed"]].itertuples(index=False)
    }
    if bad:
        history = history[~history.set_index(["run", "seed"]).index.isin(list(bad))]
        runs = runs.assign(status=runs["status"].mask(_members(runs).isin(list(bad)), "corrupt"))
    table = measures(runs, history)
    stats, unusable = running_stats(sweep, runs)
    bad.update(unusable)
    table.loc[_members(table).isin(list(bad)), "status"] = "corrupt"
    notes = [f"{run} seed {seed}: corrupt: {why}" for (run, seed), why in bad.items()]
    return table, stats.assign(sweep=sweep.name) if len(stats) else stats, notes


STATS_COLUMNS = ["sweep", "run", "layer", "stat", "members", "member_sd", "unit_sd", "ratio"]


def merge_running_stats(path: Path, new: list[pd.DataFrame], done: list[str]) -> pd.DataFrame:
    """running_stats.csv with the rows of the sweeps in `done` replaced by `new`: the other
    sweeps' rows stay as written (a partial rerun keeps them), in the registry's sweep order."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=STATS_COLUMNS)
    kept = old[~old["sweep"].isin(done)]
    rows = pd.concat([kept, *new]) if new else kept
    order = {name: i for i, name in enumerate(experiments.sweeps())}
    rank = rows["sweep"].map(lambda s: order.get(s, len(order)))
    return rows.iloc[np.argsort(rank.to_numpy(), kind="stable")][STATS_COLUMNS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab tables", description=__doc__)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument(
        "--sweep",
        type=Path,
        help="a sweep folder anywhere (a hydra.sweep.dir): its table goes to --out",
    )
    p.add_argument("--out", type=Path, help="tables folder (RESULTS/tables; with --sweep: DIR)")
    p.add_argument("sweeps", nargs="*", help="sweep names (default: the reproduction's)")
    args = p.parse_args(argv)
    if args.sweep is not None and not args.sweep.is_dir():
        print(f"error: --sweep {args.sweep}: no such folder; give a sweep folder", file=sys.stderr)
        return 2
    if args.sweep is None and not args.results.is_dir():
        print(
            f"error: --results {args.results}: no such folder; give the folder holding sweeps/",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out or (args.sweep if args.sweep is not None else args.results / "tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = (
        [args.sweep]
        if args.sweep is not None
        else [args.results / "sweeps" / n for n in args.sweeps or experiments.sweeps()]
    )
    stats, written, done, failed = [], [], [], 0
    for sweep in folders:
        try:
            table, rs, notes = sweep_table(sweep)
        except FileNotFoundError as e:
            print(f"{sweep.name}: skipped: {e}", file=sys.stderr)
            failed |= args.sweep is not None
            continue
        except MissingMeasure as e:
            print(f"{sweep.name}: skipped: {e}", file=sys.stderr)
            failed = 1
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged parquet file
            why = " ".join(str(e).split())[:300]
            print(f"{sweep.name}: skipped: unreadable ({type(e).__name__}: {why})", file=sys.stderr)
            failed = 1
            continue
        for note in notes:
            print(f"{sweep.name}: {note}", file=sys.stderr)
        with atomic_path(out_dir / f"{sweep.name}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        written.append(f"{sweep.name}.csv")
        done.append(sweep.name)
        if len(rs):
            stats.append(rs)
        print(f"{sweep.name}: {len(table)} members -> {out_dir / sweep.name}.csv")
    path = out_dir / "running_stats.csv"
    if stats or (done and path.exists()):
        with atomic_path(path) as tmp:
            merge_running_stats(path, stats, done).to_csv(tmp, index=False, float_format="%.6g")
        written.append("running_stats.csv")
    update_manifest(out_dir, written)  # bnlab claims verifies each table against it
    return failed


if __name__ == "__main__":
    sys.exit(main())
