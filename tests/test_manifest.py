"""The atomic writes every output goes through (mrl_deploy.manifest): a reader sees the old file
or the new one, never half of one, and a failed write leaves nothing behind."""

import json

import numpy as np
import pytest

from mrl_deploy.manifest import atomic_path, staged_directory, write_bytes_atomic, write_json_atomic


def test_atomic_path_replaces_only_when_the_writer_succeeds(tmp_path):
    target = tmp_path / "vectors.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy") and tmp != target
        np.save(tmp, np.arange(3))   # numpy adds no second suffix: the temp name ends in .npy
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("half way")
    np.testing.assert_array_equal(np.load(target), np.arange(3))   # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]  # no temp file left


def test_json_and_bytes_writers(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(2), "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "v": [0, 1], "p": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json_atomic(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text())["x"] == 1.5
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_staged_directory_keeps_the_old_directory_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target, marker="mark.json") as stage:
        (stage / "mark.json").write_text("1")
    with pytest.raises(ValueError):
        with staged_directory(target, marker="mark.json") as stage:
            (stage / "mark.json").write_text("2")
            raise ValueError("failed half way")
    assert (target / "mark.json").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="refusing to overwrite"):
        with staged_directory(tmp_path / "mine", marker="mark.json"):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
