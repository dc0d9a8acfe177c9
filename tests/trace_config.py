"""Follow a run's config through bnlab's code: which files it enters, and how often it comes
back to each.

Every call of a bnlab function that receives the run config, one of its sections, or an object
that keeps one (a method's self), as an argument is a visit to that function's file;
consecutive visits to the same file are one stay. The traced run fires every probe: the state
probes at steps 0 and 30, the step probes at step 30.
A reader following the config reads each stay. Run it as a script for the table:

    python tests/trace_config.py          # files, stays per file, total

test_structure.py keeps the numbers small.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections import Counter
from pathlib import Path

import bnlab

PACKAGE = Path(bnlab.__file__).resolve().parent


def _config_classes(cls=bnlab.RunConfig) -> set[type]:
    """RunConfig and the dataclasses of its sections, nested ones included."""
    found = {cls}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if dataclasses.is_dataclass(default):
            found |= _config_classes(type(default))
    return found


CONFIG_CLASSES = _config_classes()


def _is_config(value) -> bool:
    return type(value) in CONFIG_CLASSES


def _holds_config(value) -> bool:
    """The config or a section of it, or an object keeping one as an attribute (self.cfg)."""
    return _is_config(value) or any(_is_config(v) for v in getattr(value, "__dict__", {}).values())


def trace_run(*overrides: str) -> list[str]:
    """The files (relative to bnlab/) of every stay, in order, while bnlab.run trains the
    config composed from `overrides` into a temporary folder."""
    cfg = bnlab.compose(overrides=list(overrides))
    files: list[str] = []

    def tracer(frame, event, arg):
        if event != "call":
            return None
        path = Path(frame.f_code.co_filename)
        if PACKAGE not in path.parents:
            return None
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount]]
        if any(_holds_config(a) for a in args):
            rel = path.relative_to(PACKAGE).as_posix()
            if not files or files[-1] != rel:
                files.append(rel)
        return None

    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(None)
        sys.settrace(tracer)
        try:
            bnlab.run(cfg, out_dir=Path(out) / "run")
        finally:
            sys.settrace(None)
    return files


PROBED = [f"probes.{name}.every=30" for name, value in vars(bnlab.RunConfig().probes).items()
          if hasattr(value, "every")]  # every probe, on
TINY = ("seeds=[0,1]", "model.norm=batch", "train.steps=30", "train.eval_every=30",
        "probes.batch=50", "probes.jacobian_samples=20", *PROBED)  # fmt: skip


def main() -> None:
    stays = trace_run(*TINY)
    per_file = Counter(stays)
    for name, n in per_file.most_common():
        print(f"{n:4d}  {name}")
    most = max(per_file.values())
    print(f"{len(per_file)} files, {len(stays)} stays, at most {most} in one file")


if __name__ == "__main__":
    main()
