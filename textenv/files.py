"""Atomic file and directory writes: readers see the old content or the complete new one, never half of it.

Every file the toolkit writes that someone else may read while it is written (labels, clips, checkpoints, run
metadata) goes through here: the content is written to a temporary name in the same directory, flushed to disk,
then renamed onto the target (``os.replace`` is atomic on POSIX and Windows within one filesystem). If the writer
raises, the target is untouched and the temporary file is removed. This is the lowest layer that writes such files
(``textenv``: the default LM's build); ``rewardmodels`` and ``agents`` use the same helpers. A write that fails
(a full disk) raises an ``OSError`` that names the file it was writing.

Also here, for every reader of a user's files (prompts, preferences, demonstrations, ``--set``, ``--config``):
``read_text_file``, whose errors (not UTF-8, unreadable) name the file and line, and ``json_loads``, which reports
nesting too deep for Python's parser as the ``json.JSONDecodeError`` the readers already turn into a message naming
the file and line, where ``json.loads`` raises ``RecursionError``. Each reader raises them as its own error type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any


def _replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    os.replace(src, dst)  # the one rename of the toolkit's atomic writes


def _sync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not possible on every platform or filesystem."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so format-sniffing writers work) and rename it onto
    ``path`` when the block ends without an exception; otherwise remove it and leave ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        _replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _sync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary binary file beside ``path``, fsync it, then rename it onto ``path``.
    An ``OSError`` without a file name (``write`` on a full disk) is raised again naming ``path``."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, os.fspath(path)) from err
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda f: f.write(text.encode(encoding)))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses and mappings as objects, tuples as lists, paths as strings, numpy /
    torch scalars as numbers, non-finite floats as strings ("inf", "nan"; JSON has neither), anything else as repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` (made ``jsonable``) as indented, key-sorted JSON, written atomically."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block ends without an exception it takes the
    place of ``path`` (the old directory, if any, is moved aside first and deleted after). On an exception the
    temporary directory is removed and ``path`` is untouched. The swap is two renames: a crash between them leaves
    the previous directory at ``.<name>.old-<pid>`` beside ``path``, never a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}") if path.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            _replace(path, old)
        _replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _sync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_loads(text: str) -> Any:
    """``json.loads(text)``, except that nesting too deep for Python's recursive parser (``[[[[...``, which makes
    ``json.loads`` raise ``RecursionError``) raises ``json.JSONDecodeError`` like any other bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (more levels of lists/objects than Python's JSON parser "
                                   "reads)", text, 0) from None


def read_text_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of file ``path`` (newlines as ``Path.read_text`` gives them). A byte that is not UTF-8, or a
    file that cannot be read, raises ``ValueError`` with a message naming the file and line (a reader raises it
    again as its own error type); a missing file raises ``FileNotFoundError``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:  # a directory, no permission
        raise ValueError(f"{os.fspath(path)}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{os.fspath(path)}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file "
                         "as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text
