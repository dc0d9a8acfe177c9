"""Command line: `python -m bnlab [overrides]`, or `python -m bnlab -m ...` for a sweep.

Hydra lives here and nowhere else: compose, validate into a RunConfig, call `train.run`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, load_config
from .data import DataError
from .records import write_config
from .train import run, write_failure

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rc = load_config(cfg)
        summaries = run(rc, out_dir)
    except Exception as e:
        # leave a record the collector can read: the config as composed and a failed summary
        if not (out_dir / "config.yaml").exists():
            write_config(out_dir, OmegaConf.to_container(cfg, resolve=True))
        seeds = OmegaConf.to_container(cfg).get("seeds")
        valid = isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)
        write_failure(out_dir, seeds if valid else None, e)
        if isinstance(e, (ConfigError, DataError)) and HydraConfig.get().mode != RunMode.MULTIRUN:
            print(f"error: {e}", file=sys.stderr)  # bad input: the message, not a traceback
            raise SystemExit(2) from None
        raise
    done = [s["test_acc"] for s in summaries if "test_acc" in s]
    print(
        f"{out_dir}: "
        + ", ".join(
            f"seed {s['seed']} {s['status']} test_acc {s.get('test_acc', float('nan')):.4f}"
            for s in summaries
        )
    )
    return sum(done) / len(done) if done else None


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
