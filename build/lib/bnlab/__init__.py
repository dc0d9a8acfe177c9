"""bnlab: a research harness for what batch normalization really does."""

from .compose import compose
from .config import ConfigError, RunConfig, load_config
from .train import run

__all__ = ["ConfigError", "RunConfig", "compose", "load_config", "run"]
__version__ = "0.1.0"
