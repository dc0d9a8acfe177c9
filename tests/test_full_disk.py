"""`bnlab claims` and `bnlab tables` on a full disk: one line naming the file and the fix, no
traceback (issue 30). A real full tmpfs where the tests run as root, else a write that fails
with ENOSPC in-process."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from conftest import REPO, run_bnlab

from bnlab.cli import main as cli_main

TABLES = REPO / "results" / "tables"
SWEEP = "study_bias"  # a sweep the test trains (tiny), so a clean clone runs it too


def _tmpfs(mount, size: str):
    """A tmpfs of `size` mounted at `mount` (root only; else the test is skipped)."""
    mount.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    return mount


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs holding a copy of the committed tables, filled to the last byte."""
    mount = _tmpfs(tmp_path / "disk", "1m")
    try:
        shutil.copytree(TABLES, mount / "tables")
        with open(mount / "fill", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.slow
def test_claims_and_tables_on_a_full_disk_say_so_in_one_line(full_disk, tmp_path, mnist_root):
    out = run_bnlab("claims", "--results", str(full_disk))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr == (
        f"error: {full_disk / 'CLAIMS.md'}: No space left on device; free some space, or give "
        "another folder (bnlab claims --help names the options)\n"
    )
    trained = tmp_path / "trained"
    out = run_bnlab("reproduce", "--tiny", "--only", SWEEP, "--results", str(trained))
    assert out.returncode == 0, out.stderr
    (full_disk / "sweeps").symlink_to(trained / "sweeps")  # the sweep is read, not written
    out = run_bnlab("tables", "--results", str(full_disk), SWEEP)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    table = full_disk / "tables" / f"{SWEEP}.csv"
    assert out.stderr.strip().splitlines() == [
        f"error: {table}: No space left on device; free some space, or give another folder "
        "(bnlab tables --help names the options)"
    ]
    assert table.read_bytes() == (TABLES / table.name).read_bytes()  # the old table stays


def test_a_write_that_fails_for_lack_of_space_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copytree(TABLES, tmp_path / "tables")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() does: no file

    monkeypatch.setattr(os, "replace", no_space)
    assert cli_main(["claims", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'CLAIMS.md'}: No space left on device; free")
    assert err.count("\n") == 1 and not (tmp_path / "CLAIMS.md").exists()


@pytest.mark.slow
def test_claims_into_a_read_only_folder_names_the_file_not_its_temporary(tmp_path):
    mount = _tmpfs(tmp_path / "ro", "2m")
    try:
        shutil.copytree(TABLES, mount / "tables")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        out = run_bnlab("claims", "--results", str(mount))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
    assert out.returncode == 1 and out.stderr == (
        f"error: {mount / 'CLAIMS.md'}: Read-only file system; make it writable, or give "
        "another folder (bnlab claims --help names the options)\n"
    ), out.stderr
