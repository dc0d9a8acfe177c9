"""Where MNIST is when data.root is not given: one rule for every entry point (the command
line, bnlab.compose, the notebooks, the tests). bnlab.runs.config (the schema's default) and
bnlab.engine.data (the files) both read it, so it lives below both.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "BNLAB_DATA_ROOT"


def project_root() -> Path | None:
    """The checkout bnlab is imported from (also an editable install), or None when bnlab is
    an installed package."""
    root = Path(__file__).resolve().parents[2]  # bnlab/engine/locations.py -> the checkout
    try:
        return root if 'name = "bnlab"' in (root / "pyproject.toml").read_text() else None
    except OSError:
        return None


def user_cache() -> Path:
    """The platform's per-user cache folder for bnlab (~/.cache/bnlab on Linux)."""
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "bnlab"
    return Path(user_cache_dir("bnlab", appauthor=False))


def default_root() -> str:
    """data.root when none is given: $BNLAB_DATA_ROOT, else the checkout's data/ folder, else
    the per-user cache folder (the module docstring says more)."""
    if os.environ.get(DATA_ROOT_ENV):
        return os.environ[DATA_ROOT_ENV]
    checkout = project_root()
    return str(checkout / "data" if checkout else user_cache())
