"""Data loading: genuine files, integrity checks, helpful errors, the offline 5k set."""

from __future__ import annotations

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

import bnlab.engine.data
from bnlab.engine.data import MNIST_FILES, DataError, load_data, load_mnist, main, raw_dir
from bnlab.runs.config import DataConfig


def test_mnist_loads_as_flat_float_tensors(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.x_train.min() == 0.0 and mnist.x_train.max() == 1.0
    # known label counts of the MNIST test set
    counts = torch.bincount(mnist.y_test).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.y_train[:5].tolist() == [5, 0, 4, 1, 9]


def test_the_study_split_holds_out_the_first_5000(mnist_root, mnist):
    data = load_data(DataConfig(root=str(mnist_root), download=False, holdout=5000))
    assert len(data.y_train) == 55000
    assert torch.equal(data.x_train[0], mnist.x_train[5000])


def test_the_held_out_images_are_the_validation_split(mnist_root, mnist):
    data = load_data(DataConfig(root=str(mnist_root), download=False, holdout=5000))
    assert torch.equal(data.x_valid, mnist.x_train[:5000])
    assert torch.equal(data.y_valid, mnist.y_train[:5000])
    assert load_data(DataConfig(root=str(mnist_root), download=False)).x_valid is None


def test_standardised_pixels_use_the_training_images_statistics(mnist_root):
    cfg = DataConfig(root=str(mnist_root), download=False, holdout=5000, standardize=True)
    data = load_data(cfg)
    raw = load_data(DataConfig(root=str(mnist_root), download=False, holdout=5000))
    x = raw.x_train.double()
    mean, sd = x.mean(0), x.std(0, unbiased=False)
    varying = sd > 0
    assert (~varying).sum() > 0  # MNIST has constant border pixels: centred, not divided
    assert torch.allclose(
        data.x_train.double().mean(0), torch.zeros(784, dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(
        data.x_train.double().std(0, unbiased=False)[varying],
        torch.ones(1, dtype=torch.float64),
        atol=1e-4,
    )
    expected = (raw.x_test.double() - mean) / torch.where(varying, sd, 1.0)  # test: train stats
    assert torch.allclose(data.x_test.double(), expected, atol=1e-5)
    assert torch.allclose(
        data.x_valid.double(),
        (raw.x_valid.double() - mean) / torch.where(varying, sd, 1.0),
        atol=1e-5,
    )


def test_missing_files_fail_with_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, download=False)
    msg = str(err.value)
    for name in MNIST_FILES:
        assert f"{name}.gz" in msg
    assert "bnlab data fetch --root" in msg and "data=mnist5k" in msg
    assert str(raw_dir(tmp_path)) in msg


def test_a_corrupt_file_is_detected(mnist_root, tmp_path):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(raw_dir(mnist_root) / f"{name}.gz", raw / f"{name}.gz")
    blob = bytearray((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[-10] ^= 0xFF
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="has MD5"):
        load_mnist(tmp_path, download=False)


def copy_gz(mnist_root, root):
    """The four genuine .gz files copied into root/MNIST/raw; returns that folder."""
    raw = raw_dir(root)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(raw_dir(mnist_root) / f"{name}.gz", raw / f"{name}.gz")
    return raw


def extract(raw, name, edit=None):
    """Write raw/name, the decompressed IDX file, after edit(bytearray) if given."""
    blob = bytearray(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    if edit is not None:
        edit(blob)
    (raw / name).write_bytes(bytes(blob))
    return raw / name


def assert_rejected(root, path, capsys, *words):
    with pytest.raises(DataError) as err:
        load_mnist(root, download=False)
    msg = str(err.value)
    for text in (str(path), "bnlab data fetch --root", *words):
        assert text in msg
    capsys.readouterr()
    assert main(["check", "--root", str(root)]) == 1
    out = capsys.readouterr()
    assert str(path) in out.err and "MNIST ok" not in out.out


def test_a_corrupt_extracted_image_file_is_detected(mnist_root, tmp_path, capsys):
    raw = copy_gz(mnist_root, tmp_path)

    def whiten(blob):  # the first 100 pixel bytes, after the 16-byte header
        blob[16:116] = b"\xff" * 100

    path = extract(raw, "train-images-idx3-ubyte", whiten)
    assert_rejected(tmp_path, path, capsys, "has MD5")


def test_an_out_of_range_extracted_label_is_detected(mnist_root, tmp_path, capsys):
    raw = copy_gz(mnist_root, tmp_path)

    def label_200(blob):  # the first label, after the 8-byte header
        blob[8] = 200

    path = extract(raw, "train-labels-idx1-ubyte", label_200)
    assert_rejected(tmp_path, path, capsys, "has MD5", "200")


def test_an_extracted_file_of_the_wrong_shape_is_detected(mnist_root, tmp_path, capsys):
    raw = copy_gz(mnist_root, tmp_path)
    test_labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(test_labels)
    path = raw / "train-labels-idx1-ubyte"
    assert_rejected(tmp_path, path, capsys, "(10000,)", "(60000,)")


def test_genuine_extracted_files_load_as_the_gz_files_do(mnist_root, tmp_path, capsys):
    raw = copy_gz(mnist_root, tmp_path)
    from_gz = load_mnist(tmp_path, download=False)
    for name in MNIST_FILES:
        path = extract(raw, name)
        # the reference digests are those of the genuine decompressed files
        assert hashlib.md5(path.read_bytes()).hexdigest() == bnlab.engine.data.MNIST_IDX_MD5[name]
    from_plain = load_mnist(tmp_path, download=False)
    for a, b in zip(from_gz, from_plain, strict=True):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)
    assert main(["check", "--root", str(tmp_path)]) == 0
    assert "60000 train, 10000 test" in capsys.readouterr().out


def test_check_command_reports_ok_and_missing(mnist_root, tmp_path, capsys):
    assert main(["check", "--root", str(mnist_root)]) == 0
    assert "60000 train, 10000 test" in capsys.readouterr().out
    assert main(["check", "--root", str(tmp_path)]) == 1


def test_mnist5k_is_offline_real_and_stratified():
    data = load_data(DataConfig(name="mnist5k", batch_size=32))
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert torch.bincount(data.y_train).tolist() == [400] * 10
    assert torch.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    # real digits: a reasonable fraction of ink, not noise
    assert 0.05 < (data.x_train > 0.5).float().mean() < 0.25
    assert not np.shares_memory(data.x_train.numpy(), data.x_test.numpy())


def test_an_unreadable_data_file_is_one_clear_error(tmp_path, monkeypatch):
    """Permissions cannot be taken from root here: a read that fails stands in for them."""
    from pathlib import Path

    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(b"x")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match="cannot read .*Permission denied; fix its permissions"):
        load_mnist(tmp_path, download=False)
