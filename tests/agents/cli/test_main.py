"""``agents.cli.main``: the one place that turns a user's mistake into one line and status 2, and Ctrl-C / SIGTERM
into one line and 128 + the signal, for every sub-command."""

import os
import signal
import time

import pytest

from agents import cli
from agents.rundir import CheckpointError, RunInterrupted
from tests.waiting import OUTER_TIMEOUT_S


def add_parser(parser):  # this module doubles as a sub-command, so that main() is tested on its own
    parser.add_argument("what")


def run(args):
    if args.what == "usage":
        raise cli.UsageError("--pairs must be >= 1,\n  got 0")
    if args.what == "checkpoint":
        raise CheckpointError("no checkpoint of runs/x can be loaded: round-0002 (EOFError)")
    if args.what == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(OUTER_TIMEOUT_S)  # SIGTERM ends this sleep at once; were it ignored, rc 0 after it fails the test
        return 0
    if args.what == "interrupted":
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise RunInterrupted("checkpoint checkpoints/round-0003 kept; resume with: rlhf-gym try --resume") from err
    if args.what == "bug":
        raise ZeroDivisionError("a bug keeps its traceback")
    return 0


@pytest.fixture
def command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "try", (__name__, "a test command"))


@pytest.mark.parametrize("what, rc, line", [
    ("usage", 2, "rlhf-gym try: error: --pairs must be >= 1, got 0"),
    ("checkpoint", 2, "rlhf-gym try: error: no checkpoint of runs/x can be loaded: round-0002 (EOFError)"),
    ("sigterm", 143, "rlhf-gym try: interrupted (SIGTERM)"),
    ("interrupted", 130, "rlhf-gym try: interrupted (Ctrl-C): checkpoint checkpoints/round-0003 kept; resume with: "
                         "rlhf-gym try --resume"),
])
def test_errors_and_signals_end_in_one_line_and_the_status_a_shell_expects(command, capsys, what, rc, line):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    assert cli.main(["try", what]) == rc  # "sigterm": 143, so SIGTERM stopped the sleep (no clock needed)
    assert capsys.readouterr().err == line + "\n"
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # main leaves the handlers as it found them


def test_a_bug_is_not_disguised_as_a_user_error(command):
    with pytest.raises(ZeroDivisionError):
        cli.main(["try", "bug"])


@pytest.mark.parametrize("command_name", [None, "prefs", "text", "label", "build-default-lm"])
def test_help_imports_no_torch_nor_transformers(command_name):
    """``rlhf-gym [COMMAND] --help`` builds the parser without the training stack: the commands import it in
    ``run`` (their boundary), so the CLI answers at once. Checked in a fresh interpreter."""
    import subprocess
    import sys

    argv = [*(() if command_name is None else (command_name,)), "--help"]
    probe = "\n".join([
        "import sys", "from agents.cli import main", "try:", f"    main({argv!r})", "except SystemExit:", "    pass",
        "heavy = sorted(m for m in ('torch', 'transformers', 'stable_baselines3', 'peft') if m in sys.modules)",
        "print('heavy:', heavy)"])
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=OUTER_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert "usage: rlhf-gym" in out.stdout and out.stdout.strip().endswith("heavy: []"), out.stdout[-500:]
