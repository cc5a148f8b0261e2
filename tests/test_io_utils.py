"""Tests of the atomic writers in monai_ultraad.io_utils."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from monai_ultraad import io_utils
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_and_text_create_parent_folders(tmp_path):
    dest = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(dest, b"\x00\x01") == dest
    assert dest.read_bytes() == b"\x00\x01"
    atomic_write_text(dest.with_suffix(".txt"), "héllo")
    assert dest.with_suffix(".txt").read_text(encoding="utf-8") == "héllo"
    assert _leftovers(dest.parent) == ["out.bin", "out.txt"]  # no temp files left


def test_new_file_gets_normal_permissions_and_replacement_keeps_mode(tmp_path):
    dest = tmp_path / "x.txt"
    atomic_write_text(dest, "1")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    os.chmod(dest, 0o640)
    atomic_write_text(dest, "2")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640 and dest.read_text() == "2"


def test_json_round_trip_with_numpy_and_torch_values(tmp_path):
    dest = tmp_path / "m.json"
    obj = {"auroc": np.float32(0.5), "n": np.int64(3), "v": np.arange(3), "t": torch.tensor([1.5]), "x": float("nan")}
    atomic_write_json(dest, obj)
    back = json.loads(dest.read_text())
    assert back["auroc"] == 0.5 and back["n"] == 3 and back["v"] == [0, 1, 2] and back["t"] == [1.5]
    assert math.isnan(back["x"])
    atomic_write_json(dest, obj, nan_as_null=True)
    assert "NaN" not in dest.read_text() and json.loads(dest.read_text())["x"] is None


def test_unserialisable_json_leaves_no_file_and_keeps_old_content(tmp_path):
    dest = tmp_path / "r.json"
    with pytest.raises(TypeError):
        atomic_write_json(dest, {"bad": object()})
    assert _leftovers(tmp_path) == []
    atomic_write_json(dest, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(dest, {"bad": {1, 2}})
    assert json.loads(dest.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path) == ["r.json"]


def test_failure_midway_removes_temp_file(tmp_path, monkeypatch):
    dest = tmp_path / "r.bin"
    atomic_write_bytes(dest, b"old")

    def broken_fsync(fd):  # the data was written to the temp file, then the disk "fails"
        raise OSError("simulated I/O error")

    monkeypatch.setattr(io_utils.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(dest, b"new content")
    monkeypatch.undo()
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["r.bin"]


def test_failure_in_replace_removes_temp_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(io_utils.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(tmp_path / "t.txt", "x")
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []


def test_wrong_payload_types_raise(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "a", b"not str")  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == []
