"""Data loading: genuine files, integrity checks, helpful errors, the offline 5k set."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from bnlab.config import DataConfig
from bnlab.data import MNIST_FILES, DataError, load_data, load_mnist, main, raw_dir


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


def test_missing_files_fail_with_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, download=False)
    msg = str(err.value)
    for name in MNIST_FILES:
        assert f"{name}.gz" in msg
    assert "python -m bnlab.data fetch --root" in msg and "data=mnist5k" in msg
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
