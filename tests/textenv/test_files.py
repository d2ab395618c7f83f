"""Atomic writes: readers see the old content or the complete new one; failures leave nothing behind."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from textenv.files import (
    atomic_directory,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    jsonable,
    write_json,
)


def test_atomic_write_replaces_the_file_only_when_the_writer_is_done(tmp_path):
    path = tmp_path / "sub" / "data.bin"  # the directory is created
    atomic_write_bytes(path, b"old")

    def writer(f):
        f.write(b"new, part 1")
        assert path.read_bytes() == b"old"  # mid-write, readers still see the previous content
        f.write(b", part 2")

    assert atomic_write(path, writer) == path
    assert path.read_bytes() == b"new, part 1, part 2"
    assert [p.name for p in path.parent.iterdir()] == ["data.bin"]


def test_atomic_write_keeps_the_old_content_when_the_writer_raises(tmp_path):
    path = tmp_path / "data.txt"
    atomic_write_text(path, "good")

    def writer(f):
        f.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(path, writer)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]  # no temporary file left


def test_a_failed_rename_keeps_the_old_content_and_removes_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "data.txt"
    atomic_write_text(path, "good")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr("textenv.files.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_atomic_path_keeps_the_suffix_for_writers_that_sniff_it(tmp_path):
    target = tmp_path / "agent.zip"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".zip") and tmp != target
        tmp.write_bytes(b"zip bytes")
        assert not target.exists()
    assert target.read_bytes() == b"zip bytes" and not tmp.exists()


def test_text_is_written_in_the_given_encoding(tmp_path):
    path = atomic_write_text(tmp_path / "t.txt", "ünï\n", encoding="latin-1")
    assert path.read_bytes() == "ünï\n".encode("latin-1")


def test_atomic_directory_swaps_the_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "stale.txt").write_text("x")
        assert not target.exists()
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("2")
        assert sorted(p.name for p in target.iterdir()) == ["a.txt", "stale.txt"]  # the old one, until the end
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # nothing of the old directory survives
    assert (target / "a.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or moved-aside directory left


def test_atomic_directory_keeps_the_old_directory_when_the_block_raises(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(RuntimeError, match="save failed"), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("save failed")
    assert (target / "a.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@dataclasses.dataclass
class _Inner:
    path: Path
    values: tuple


@dataclasses.dataclass
class _Outer:
    lr: float
    inner: _Inner


def test_jsonable_makes_plain_json_types():
    assert jsonable(np.float32(1.5)) == 1.5 and type(jsonable(np.float32(1.5))) is float
    assert jsonable(np.int64(7)) == 7 and type(jsonable(np.int64(7))) is int
    assert jsonable(np.bool_(True)) is True
    assert jsonable(torch.tensor(2.5)) == 2.5
    assert jsonable(np.array(3)) == 3  # 0-d arrays are scalars
    assert jsonable(math.inf) == "inf" and jsonable(-math.inf) == "-inf" and jsonable(math.nan) == "nan"
    assert jsonable(np.float64(np.inf)) == "inf"  # a numpy non-finite is made a string too
    assert jsonable(Path("runs") / "a") == "runs/a"
    assert jsonable(_Outer(1e-3, _Inner(Path("x"), (1, np.int32(2))))) == {
        "lr": 1e-3, "inner": {"path": "x", "values": [1, 2]}}
    assert jsonable({1: (None, "s")}) == {"1": [None, "s"]}
    assert jsonable(object).startswith("<class")  # anything else: its repr


def test_write_json_writes_strict_sorted_json(tmp_path):
    path = write_json(tmp_path / "s.json", {"b": np.float64(np.inf), "a": [np.int64(1)]})
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')

    def no_constants(name):
        raise AssertionError(f"not strict JSON: {name}")

    assert json.loads(text, parse_constant=no_constants) == {"a": [1], "b": "inf"}
