"""The ``rlhf-gym`` command line: one sub-command per use case.

Each sub-command lives in ``agents/cli/<name>.py`` and provides ``add_parser(subparsers)`` and ``run(args)``;
modules are imported only when their sub-command runs, so ``rlhf-gym --help`` stays fast.

What every sub-command gets from ``main``:

- Bad input: raise ``UsageError`` (or any ``agents.rundir.RunError``: ``RunDirError``, ``CheckpointError``,
  ``DeviceError``) with a message that says what to do; ``main`` prints ``rlhf-gym <cmd>: error: <message>`` as one
  line on stderr and returns 2 (``-v`` adds the traceback). Nothing else is caught: a bug keeps its traceback.
- Ctrl-C and SIGTERM: both raise KeyboardInterrupt in the main thread (SIGTERM through the handler installed here),
  so a command stops within seconds wherever it is, running its ``finally`` blocks. ``main`` prints one line,
  ``rlhf-gym <cmd>: interrupted (SIGTERM)[: <message>]``, and returns 128 + the signal number (130, 143), as a shell
  does. A long command raises ``agents.rundir.RunInterrupted("<what was kept>; resume with: ...")`` from its
  KeyboardInterrupt to say how to resume (``resume_hint``).
- Long commands with ``--out``, ``--resume`` and ``--overwrite`` get their settings and run directory from
  ``run_settings``: the saved settings with ``--resume``, else fresh ones in an ``--out`` that holds no other run;
  the run directory's lock is held for the command (a second process on it: one line naming the holder's pid, 2).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agents.rundir import DeviceError, RunError, RunInterrupted, checkpoint_candidates, lock_run_dir, prepare_out

__all__ = ["COMMANDS", "RunInterrupted", "UsageError", "check_threads", "main", "resume_hint", "run_settings"]

logger = logging.getLogger(__name__)
C = TypeVar("C")

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prefs": ("agents.cli.prefs", "learn a reward from segment preferences and train any SB3 agent on it"),
    "sft": ("agents.cli.sft", "supervised fine-tuning on demonstrations (TRL formats): the first stage of RLHF"),
    "text": ("agents.cli.text", "RLHF on TextGen-v0: reward model from text preferences, then PPO/GRPO/RLOO/DPO"),
    "label": ("agents.cli.label", "open the labelling web app on a run directory"),
    "build-default-lm": ("agents.cli.default_lm", "rebuild the offline default language model"),
}


class UsageError(RunError, ValueError):
    """A command-line value the user must change: ``main`` prints the message on one line and returns 2."""


@contextlib.contextmanager
def run_settings(args: argparse.Namespace, load: Callable[[Path], C], build: Callable[[], C],
                 default_out: Callable[[C], Path] | None = None) -> Iterator[tuple[C, Path]]:
    """``with run_settings(...) as (settings, out):`` the settings and run directory of a long command with
    ``--out``, ``--resume``, ``--overwrite`` (and ``--no-progress``), with ``out``'s lock held for the block
    (``agents.rundir.lock_run_dir``: a second process on ``out`` gets ``RunDirBusy``, before anything is read,
    moved or written). With ``--resume`` the run's saved settings (``load(out)``), else ``build()`` from the
    arguments, in an ``--out`` (default ``default_out(settings)``) that holds no other run
    (``agents.rundir.prepare_out``). A bad value becomes a ``UsageError``; a ``RunError`` passes as it is."""
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite moves it aside: pass one of them")
    if args.resume:
        if not args.out or not Path(args.out).is_dir():
            raise UsageError(f"--resume: {args.out} has no checkpoint to resume from (checkpoints/); drop --resume "
                             "to start a new run")
        with lock_run_dir(args.out) as out:  # first: a running process's checkpoints are its own
            yield _saved_settings(args, load, prepare_out(out, resume=True)), out
        return
    try:
        cfg = build()
    except RunError:
        raise
    except (ValueError, TypeError) as err:  # unknown names, config validation: messages that say what to change
        raise UsageError(str(err)) from err
    out = args.out or (default_out(cfg) if default_out is not None else None)
    if out is None:
        raise UsageError("--out is required: the run directory")
    with lock_run_dir(out):
        yield cfg, prepare_out(out, overwrite=args.overwrite)


def _saved_settings(args: argparse.Namespace, load: Callable[[Path], C], out: Path) -> C:
    """The settings the run in ``out`` was started with, for ``--resume`` (``run_settings``)."""
    if not checkpoint_candidates(out):
        raise UsageError(f"--resume: {out} has no checkpoint to resume from (checkpoints/); drop --resume to start a "
                         "new run")
    try:
        cfg = load(out)
    except DeviceError as err:  # saved with a device this machine lacks; --resume ignores --device
        raise DeviceError(f"{err}. --resume keeps the run's saved settings: to continue it here, set \"device\": "
                          f"\"cpu\" under \"config\" in {out}/config.json") from err
    except RunError:  # e.g. config.json and every checkpoint's copy of it damaged
        raise
    except (ValueError, TypeError) as err:  # saved settings this version refuses
        raise UsageError(f"{out}/config.json: {err}") from err
    if getattr(args, "no_progress", False):
        cfg.progress_bar = False  # type: ignore[attr-defined]
    logger.info("resuming %s with its saved settings (command-line settings other than --out are ignored)", out)
    return cfg


def check_threads(threads: int, low: int = 1) -> None:
    """``--threads``: at least ``low`` (0 = torch's default where allowed), at most 4 per CPU of this machine (far
    more threads than cores only contend, and huge counts crash the thread pool)."""
    import os

    high = 4 * (os.cpu_count() or 1)
    if not low <= threads <= high:
        zero = " (0 = torch's default)" if low == 0 else ""
        raise UsageError(f"--threads must be between {low}{zero} and {high} (4 per CPU here), got {threads}")


def resume_hint(command: str, out: Path) -> str:
    """What an interrupted run in ``out`` kept and how to go on, for ``RunInterrupted``."""
    ckpt = checkpoint_candidates(out)
    if not ckpt:
        return (f"stopped before the first checkpoint; start again with --out {out} --overwrite (people's labels in "
                "labels.sqlite are kept and found again)")
    return f"checkpoint {ckpt[0].relative_to(out)} kept; resume with: rlhf-gym {command} --out {out} --resume"


class _Stop:
    """SIGTERM -> KeyboardInterrupt, remembering which signal came (for the message and the exit status)."""

    def __init__(self) -> None:
        self.signum = signal.SIGINT

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def install(self) -> Any:
        """Install for SIGTERM (and SIGINT, which Python maps to KeyboardInterrupt already); returns the previous
        handlers. Only the main thread may install signal handlers: elsewhere (a test's thread) this does nothing."""
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup`, `cmd &`: the user chose to ignore it
                    previous[sig] = signal.signal(sig, self)
            except ValueError:  # not the main thread
                break
        return previous


def main(argv: list[str] | None = None) -> int:
    """Run ``rlhf-gym`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status (module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="rlhf-gym", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_parser(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    stop = _Stop()
    previous = stop.install()
    try:
        result = importlib.import_module(args._module).run(args)
    except RunError as err:
        logger.debug("%s failed", args.command, exc_info=True)  # -v: the traceback too
        print(f"rlhf-gym {args.command}: error: {_one_line(err)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as err:
        name = "SIGTERM" if stop.signum == signal.SIGTERM else "Ctrl-C"
        detail = f": {_one_line(err)}" if isinstance(err, RunInterrupted) and str(err) else ""
        print(f"rlhf-gym {args.command}: interrupted ({name}){detail}", file=sys.stderr, flush=True)
        return 128 + int(stop.signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: a C handler, not restorable
    return int(result or 0)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())

