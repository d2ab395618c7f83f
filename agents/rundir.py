"""The run directory every training command writes.

Layout of ``RunDir(path)``::

    config.json       the full configuration of the run (dataclasses are converted with ``dataclasses.asdict``)
    tb/               TensorBoard event files (``tensorboard --logdir path/tb``)
    checkpoints/      model checkpoints and resumable state
    metrics.jsonl     every logged scalar, one JSON object per ``log`` call (what the PNG is drawn from)
    summary.json      the final metrics
    curves.png        the training curves
    run.lock          the lock of the process running in it (``lock_run_dir``; its pid inside)

Writes of JSON files are atomic (``textenv.files.write_json``), so an interrupted run never leaves a half-written
summary or config behind.

Checkpoints: ``commit_checkpoint(name)`` makes ``checkpoints/<name>/`` the latest (``checkpoints/latest.json``, written
atomically: the commit point) and keeps the one before it, so that a damaged latest checkpoint has something to fall
back to (``checkpoint_candidates`` lists them, newest first).

One process per run directory: ``lock_run_dir(path)`` holds an exclusive advisory lock (``flock``) on
``path/run.lock`` for a block; the file holds the holder's pid. ``rlhf-gym prefs`` and ``rlhf-gym text`` hold it for
the whole command, ``PreferenceLoop.run``, ``run_prefs`` and ``run_text_loop`` for the whole run (the lock is
re-entrant within a process), and ``prepare_out`` while it checks or moves files aside. A second process on the same
directory gets ``RunDirBusy`` naming the holder's pid. The kernel drops the lock when its process ends, kill -9
included, so a stale ``run.lock`` never blocks a ``--resume``. ``rlhf-gym label`` takes no lock: people label while
the run waits for them.

Also here, for every long command: the errors a user can fix (``RunError``: the CLI prints the message on one line
and exits with 2), the checks of ``--out`` (``prepare_out``) and ``--device`` (``check_device``), and
``signals_deferred`` (a checkpoint save is never cut in half by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from textenv.files import atomic_write_bytes, atomic_write_text, jsonable, write_json

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["CheckpointError", "DeviceError", "LOCK_FILE", "RUN_FILES", "RunDir", "RunDirBusy", "RunDirError",
           "RunError", "RunInterrupted", "atomic_write_text", "check_device", "checkpoint_candidates",
           "earlier_run_files", "lock_run_dir", "prepare_out", "signals_deferred", "write_json"]

logger = logging.getLogger(__name__)

#: What a training run writes into its directory (``prepare_out`` moves these aside for ``overwrite``). People's
#: labels (labels.sqlite) and clips/ are not among them: they outlive a run and are found again by content hash.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "curves.png", "tb", "checkpoints", "sft", "policy",
             "reward_model", "pairs.jsonl", "model", "adapters", "trackio", "wandb")
LATEST = "latest.json"
LOCK_FILE = "run.lock"  # the advisory lock of the process running in the directory (its pid inside)


class RunError(Exception):
    """Bad input, or a run directory in a state the user must decide about. ``rlhf-gym`` prints the message as one
    line (``rlhf-gym <cmd>: error: <message>``) and exits with status 2; the message says what to do."""


class RunDirError(RunError, ValueError):
    """``--out`` cannot hold the run: not a directory, not writable, or it holds files of another run."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock (``lock_run_dir``): a second run would interleave its files."""


class CheckpointError(RunError):
    """No checkpoint of the run can be loaded (each one tried is named in the message, with what is wrong)."""


class DeviceError(RunError, ValueError):
    """A torch device this machine does not have (``--device cuda`` on a CPU-only torch, a GPU index too high)."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; the message says what was kept and how to resume. A KeyboardInterrupt,
    so that code which cleans up on Ctrl-C does so here too."""


def check_device(device: str | None) -> str | None:
    """Return ``device`` unchanged if torch can use it here (None and ``auto`` always can), else raise DeviceError."""
    if device is None or device == "auto":
        return device
    import torch  # lazy: the run directory itself needs no torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"--device {device!r} is not a torch device ({err}); use cpu, cuda, cuda:N or mps") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
                              "or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0.."
                              f"cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {device}: rlhf-gym runs on cpu, cuda or mps, not {dev.type}")
    return device


def _check_writable(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:  # read-only filesystem, no permission, a file where a parent directory should be
        raise RunDirError(f"--out {path} cannot be written ({err.strerror or err}); choose a directory you can "
                          "write to") from None


def earlier_run_files(path: str | os.PathLike) -> list[str]:
    """The ``RUN_FILES`` already in ``path`` (an earlier run, perhaps one that crashed before its first checkpoint)."""
    path = Path(path)
    return [name for name in RUN_FILES
            if (path / name).is_file() or ((path / name).is_dir() and any((path / name).iterdir()))]


def prepare_out(path: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Path:
    """Check that ``path`` can hold a run and will not mix two runs' files; returns it as a Path.

    Raises RunDirError when ``path`` is not a writable directory, or when a fresh run (not ``resume``) would land on
    an earlier run's files: those are never appended to. With ``overwrite`` they are moved aside into
    ``path/superseded-<UTC time>/`` (nothing is deleted) and the run starts afresh; labels.sqlite and clips/ stay.
    Raises ``RunDirBusy`` when another process runs in ``path`` (``lock_run_dir``, held while this checks).
    """
    path = Path(path)
    _check_writable(path)
    with lock_run_dir(path):  # re-entered when the caller holds it (the CLI, for the whole command)
        return path if resume else _check_earlier_run(path, overwrite)


def _check_earlier_run(path: Path, overwrite: bool) -> Path:
    earlier = earlier_run_files(path)
    if earlier and not overwrite:
        has_ckpt = bool(checkpoint_candidates(path))
        hint = "pass --resume to continue it, " if has_ckpt else ""
        raise RunDirError(f"{path} already holds {'a run' if has_ckpt else 'files of an earlier run'} "
                          f"({', '.join(earlier)}); {hint}pass --overwrite to move them aside into "
                          f"{path}/superseded-<time>/ and start afresh, or choose another --out")
    if earlier:
        aside = path / time.strftime("superseded-%Y%m%d-%H%M%S", time.gmtime())
        while aside.exists():
            aside = aside.with_name(aside.name + "-1")
        aside.mkdir()
        for name in earlier:
            shutil.move(str(path / name), str(aside / name))
        logger.warning("moved the earlier run's %s into %s", ", ".join(earlier), aside)
    return path


_held: dict[str, list[Any]] = {}  # real path of a run directory -> [lock file descriptor, re-entries, created it]
_held_guard = threading.Lock()


@contextlib.contextmanager
def lock_run_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``path`` (module docstring) for the block; yields ``path``.

    Re-entrant within a process (the CLI holds it for the command, the run inside it again). Raises ``RunDirBusy``
    naming the pid of the process that holds it, and ``RunDirError`` when ``path`` cannot hold a lock file. A
    directory the lock created that holds nothing else when it is released (a command refused before it wrote
    anything) is removed with it."""
    path = Path(path)
    key = os.path.realpath(path)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            created = not path.exists()
            _held[key] = [_acquire(path), 1, created]
    try:
        yield path
    finally:
        with _held_guard:
            held = _held[key]
            held[1] -= 1
            if held[1] == 0:
                del _held[key]
                _release(path, held[0], created=held[2])


def _acquire(path: Path) -> int:
    """Open ``path/run.lock``, take its flock without waiting, write this process's pid into it; the descriptor."""
    lock = path / LOCK_FILE
    while True:
        _check_writable(path)  # "is a file", "cannot be written": the errors prepare_out gives
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"--out {path}: cannot create its lock file {LOCK_FILE} ({err.strerror or err}); "
                              "choose a directory you can write to") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunDirBusy(f"--out {path} is in use by another run (pid {holder}, which holds {lock}); wait for "
                             "it to end or stop it, then --resume; or choose another --out") from None
        except OSError as err:  # a filesystem without locks (some network mounts): run unlocked, say so
            logger.warning("cannot lock %s (%s): nothing stops a second process from writing into %s", lock, err,
                           path)
            return fd
        if _is_file_at(fd, lock):
            break
        os.close(fd)  # locked a lock file that _release removed meanwhile: take the one there now
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _release(path: Path, fd: int, created: bool) -> None:
    """Release the lock (closing the descriptor drops the flock); first remove a directory the lock created, if it
    holds nothing but the lock file (``_acquire`` re-checks the file it locked, so removing it is safe)."""
    try:
        if created and os.listdir(path) == [LOCK_FILE]:
            os.unlink(path / LOCK_FILE)
            os.rmdir(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """The pid written in a lock file another process holds ("unknown" in the instant before it writes it)."""
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def checkpoint_candidates(path: str | os.PathLike) -> list[Path]:
    """Checkpoint directories of the run in ``path`` to resume from, best first: the latest, the one before it,
    then (if latest.json itself is missing or damaged) every checkpoint directory, newest first. Empty when the run
    has none. Reads only."""
    checkpoints = Path(path) / "checkpoints"
    names: list[str] = []
    try:
        latest = json.loads((checkpoints / LATEST).read_text(encoding="utf-8"))
        names += [n for n in (latest.get("checkpoint"), latest.get("previous")) if isinstance(n, str)]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("%s is damaged (%s); looking for checkpoints in %s", checkpoints / LATEST, err, checkpoints)
    found = [checkpoints / n for n in dict.fromkeys(names) if (checkpoints / n).is_dir()]
    if not found and checkpoints.is_dir():  # no latest.json, a damaged one, or one naming deleted directories
        dirs = [p for p in checkpoints.iterdir() if p.is_dir() and not p.name.startswith(".")]
        found = sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)
    return found


@contextlib.contextmanager
def signals_deferred(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the duration of the block (a checkpoint save), then act on them as the
    handlers in force before would have: a run stops within the moment the save takes, never with half a checkpoint.

    The Python-level handlers are swapped (a signal mask would not do: the kernel hands a process-directed signal
    to any thread that does not block it, and torch and tensorboard run threads of their own). Only the main thread
    may set handlers, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals
                if signal.getsignal(sig) is not None}  # None: a C library's handler, which Python cannot put back
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)  # e.g. raises KeyboardInterrupt, now that the save is complete
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


class RunDir:
    """A run directory: config, TensorBoard logs, checkpoints, metrics, summary and curves."""

    def __init__(self, path: str | os.PathLike, tensorboard: bool = True,
                 report_to: Sequence[str] = ("tensorboard",)):
        self.path = Path(path)
        _check_writable(self.path)  # RunDirError naming the path, not a traceback from deep in a write
        self.checkpoints.mkdir(exist_ok=True)
        self._tensorboard = tensorboard and "tensorboard" in report_to
        self._writer = None
        self._others = [name for name in report_to if name in ("trackio", "wandb")]  # started by write_config
        self._trackers: list[Any] = []

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "curves.png"

    # -- checkpoints ---------------------------------------------------------------------------------------------
    @staticmethod
    def latest_checkpoint_in(path: str | os.PathLike) -> str | None:
        """The checkpoint ``path/checkpoints/latest.json`` names, or None (no checkpoint, or latest.json damaged)."""
        try:
            name = json.loads((Path(path) / "checkpoints" / LATEST).read_text(encoding="utf-8"))["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return name if isinstance(name, str) else None

    def commit_checkpoint(self, name: str, previous: str | None = None) -> None:
        """Make ``checkpoints/<name>`` (complete on disk) the latest; keep ``previous`` (default: the latest until now;
        a run that fell back past a damaged latest passes the checkpoint it resumed from), delete older ones."""
        previous = previous or self.latest_checkpoint_in(self.path)
        keep = {name} | ({previous} if previous and previous != name else set())
        write_json(self.checkpoints / LATEST, {"checkpoint": name, "previous": previous if previous != name else None})
        for old in self.checkpoints.iterdir():
            stale_temp = old.name.startswith(".") and (".tmp-" in old.name or ".old-" in old.name)  # a cut save's
            if old.is_dir() and old.name not in keep and (stale_temp or not old.name.startswith(".")):
                shutil.rmtree(old, ignore_errors=True)

    def checkpoint_candidates(self) -> list[Path]:
        """``checkpoint_candidates(self.path)``."""
        return checkpoint_candidates(self.path)

    def write_config(self, config: Any) -> None:
        write_json(self.path / "config.json", config)
        if self._others and not self._trackers:  # the other trackers start with the run's settings
            self._start_trackers(config)

    def _start_trackers(self, config: Any) -> None:
        from agents.trackers import make_tracker

        self._trackers = [make_tracker(name, self.path, config) for name in self._others]

    @property
    def writer(self):
        """A ``torch.utils.tensorboard.SummaryWriter`` on ``tb/`` (created on first use)."""
        if self._writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: loads tensorboard, seconds of import

            self._writer = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._writer

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log namespaced scalars (``eval/true_return``, ...) at ``step`` to TensorBoard and metrics.jsonl."""
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        if self.writer is not None:
            for key, value in clean.items():
                self.writer.add_scalar(key, value, step)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **jsonable(clean)}) + "\n")
        if self._others and not self._trackers:  # a resumed run: the trackers start with the saved settings
            self._start_trackers(json.loads(self.path.joinpath("config.json").read_text(encoding="utf-8"))
                                 if self.path.joinpath("config.json").is_file() else {})
        for tracker in self._trackers:
            tracker.log(int(step), clean)

    def metrics_size(self) -> int:
        """The length of metrics.jsonl in bytes (0 when there is none): what a checkpoint records, so that a resumed
        run can ``cut_metrics`` back to it."""
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def cut_metrics(self, size: int) -> int:
        """Cut metrics.jsonl back to its first ``size`` bytes (the rows logged up to a checkpoint), atomically: rows
        logged after the checkpoint a run resumes from (a round cut short by kill -9) would stand beside the re-run's
        as stale points on the curves. Returns the number of rows dropped. A file shorter than ``size`` (replaced
        by hand) is left as it is, with a warning."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return 0
        if len(data) < size:
            logger.warning("%s is shorter than when the checkpoint was saved; left as it is", self.metrics_path)
            return 0
        if len(data) == size:
            return 0
        dropped = sum(1 for line in data[size:].splitlines() if line.strip())
        atomic_write_bytes(self.metrics_path, data[:size])
        logger.info("dropped %d row(s) of metrics.jsonl logged after the checkpoint (re-run now)", dropped)
        return dropped

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: keep the rest
                    logger.warning("skipping a truncated line in %s", self.metrics_path)
        return rows

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def plot(self, panels: Sequence[tuple[Any, ...]], x_key: str = "step", title: str | None = None) -> Path:
        """Draw ``curves.png`` from metrics.jsonl: one panel per ``(panel_title, [metric keys])``, against ``x_key``
        (a panel ``(panel_title, [keys], its_x_key)`` has its own x axis, e.g. the KL of a run's evaluations)."""
        import matplotlib  # lazy: a second of import, and only the end of a run draws

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        for ax, (panel_title, keys, *own_x) in zip(axes[0], panels, strict=True):
            x = own_x[0] if own_x else x_key
            for key in keys:
                pts = [(r[x], r[key]) for r in rows if key in r and x in r]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", markersize=3, label=key)
            ax.set_title(panel_title)
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)
        return self.plot_path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
