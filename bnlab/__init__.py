"""bnlab: a research harness for what batch normalization really does."""

import os
import platform

# ATen picks its vectorised CPU kernels by processor (AVX2, or AVX512 where the CPU has it),
# and the two round some reductions differently; a relu network turns that last-bit
# difference into test accuracies 0.001 apart within 5,000 steps. Every committed result was
# trained with the AVX2 kernels, which every x86-64 processor of the last decade runs, so
# bnlab asks for them (before torch computes anything): the same config then trains the same
# numbers on any such machine. ATEN_CPU_CAPABILITY set by the user wins; runs record what
# was used (summary.json: cpu_kernels).
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

from .runs.compose import compose  # noqa: E402 (after the kernel choice above)
from .runs.config import ConfigError, RunConfig, load_config  # noqa: E402
from .runs.train import run  # noqa: E402

__all__ = ["ConfigError", "RunConfig", "compose", "load_config", "run"]
__version__ = "0.1.0"
