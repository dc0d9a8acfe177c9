"""Probes: measurements of every mechanism credited to BN, on the same runs, per member.

Each probe computes rows (split, metric, layer, values) with values a (K,) tensor, one number
per ensemble member. The training loop runs them (Prober) on the schedule
`probes.<name>.every` (0 = off; a probe fires at steps that are multiples of it, step 0
included where it makes sense). State probes look at the model after step t on a fixed probe
batch drawn once per run; step probes look at step t itself (its batch, its gradient, its
update). One probe also keeps a running sum over every step (scale: ScaleTracker, a dot product
per layer and step of what the step already computed). Probes observe and never steer: state
probes run in eval mode, which changes nothing, and every extra training-mode pass (of a step
probe, or ics_train's) restores BN buffers, counters and random streams (capture/restore), so
the loss history is bit-for-bit what it is with probes off (tested for every registered probe).
Each probe's docstring cites the paper and section it implements.

The modules, one per family of probes:

- registry: the registry of probes (name, kind, rows function) and the `probe` decorator that
  registers a function where it is defined; why the schedules stay in bnlab/runs/config.py.
- weights: weights and gradients (probes.weights, probes.grads).
- activations: activations and ICS: distributional ICS, drift, training-mode moments, BN
  mismatch and gain (probes.activations, probes.ics_train, probes.mismatch).
- jacobian: layer-Jacobian singular values (probes.jacobian).
- loss_landscape: StepContext; gradient ICS, the loss landscape, Lanczos curvature and
  overshoot (probes.ics_grad, probes.landscape, probes.curvature).
- scale: ScaleTracker (probes.scale).
- prober: Prober, which runs the registered probes on their schedules.

Importing the package registers every family's probes (bnlab.runs.config then checks that the
registry and its ProbesConfig name the same probes: registry.check).
"""

from ...engine.modelstate import capture, linears, norms, restore
from . import registry
from .activations import (
    activation_stats,
    bn_gain_stats,
    drift_rows,
    gaussian_kl,
    ics_distribution,
    input_moments,
    mismatch_stats,
    scale_free_drift,
    train_mode_moments,
)
from .jacobian import (
    JAC_BINS,
    JAC_TINY,
    jacobian_stats,
    jacobian_summaries,
    layer_jacobian_diagonals,
    singular_values,
)
from .loss_landscape import (
    CURVATURE_SEED,
    CURVATURE_TOL,
    Eigen,
    StepContext,
    _twice_differentiable,
    curvature,
    ics_gradient,
    landscape,
    overshoot,
    top_eigenvalue,
)
from .prober import Prober, Step
from .scale import ScaleTracker
from .weights import (
    _sv,
    activation_grads,
    affine_layers,
    grad_stats,
    grad_weight_cosine,
    spectral_norm,
    update_stats,
    weight_stats,
)

__all__ = [
    "CURVATURE_SEED",
    "CURVATURE_TOL",
    "JAC_BINS",
    "JAC_TINY",
    "Eigen",
    "Prober",
    "ScaleTracker",
    "Step",
    "StepContext",
    "_sv",
    "_twice_differentiable",
    "activation_grads",
    "activation_stats",
    "affine_layers",
    "bn_gain_stats",
    "capture",
    "curvature",
    "drift_rows",
    "gaussian_kl",
    "grad_stats",
    "grad_weight_cosine",
    "ics_distribution",
    "ics_gradient",
    "input_moments",
    "jacobian_stats",
    "jacobian_summaries",
    "landscape",
    "layer_jacobian_diagonals",
    "linears",
    "mismatch_stats",
    "norms",
    "overshoot",
    "registry",
    "restore",
    "scale_free_drift",
    "singular_values",
    "spectral_norm",
    "top_eigenvalue",
    "train_mode_moments",
    "update_stats",
    "weight_stats",
]
