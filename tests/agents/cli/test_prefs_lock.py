"""One process per run directory (issue 25): while ``rlhf-gym prefs --out D`` runs, a second ``rlhf-gym prefs`` on D,
``--resume`` or ``--overwrite``, is refused in one line naming the first's pid, with exit status 2, and touches
nothing; the first finishes as if alone. Real processes: the first waits for people (an event, not a guess) while the
second ones try. ``rlhf-gym text`` takes the same lock."""

import hashlib
import json
import subprocess
import sys

import pytest

from agents.rundir import LOCK_FILE
from rewardmodels.feedback.label_store import LabelStore, store_path
from tests.agents.cli.test_prefs import TINY
from tests.agents.cli.test_prefs_signals import PEOPLE, ROOT, _env, _start, _wait_for, _waiting_for_people
from tests.waiting import OUTER_TIMEOUT_S


def _run_files(out):
    """The run's own files with a digest of their bytes (the label store is the people's, and the app's)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith("labels.sqlite") and "clips" not in p.parts}


@pytest.mark.slow  # three CLI processes: about a minute on 2 loaded cores
def test_a_second_process_on_a_running_out_is_refused_and_the_first_finishes_untouched(tmp_path):
    out = tmp_path / "run"
    first = _start([*PEOPLE, "--out", str(out)])
    try:
        _wait_for(first, lambda: _waiting_for_people(out), "pairs queued for people")
        assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
        before = _run_files(out)
        seconds = [subprocess.Popen([sys.executable, "-m", "agents.cli", "prefs", *argv, "--out", str(out)], cwd=ROOT,
                                    env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for argv in (["--resume", "--no-progress"], [*TINY, "--overwrite"])]
        for second in seconds:
            _, err = second.communicate(timeout=OUTER_TIMEOUT_S)
            line = err.strip()
            assert second.returncode == 2 and "\n" not in line and "Traceback" not in line, (second.returncode, err)
            refusal = f"rlhf-gym prefs: error: --out {out} is in use by another run (pid {first.pid}, "
            assert line.startswith(refusal), line
        assert _run_files(out) == before and not list(out.glob("superseded-*"))  # nothing read, moved or written
        assert first.poll() is None  # still waiting for people

        with LabelStore(store_path(out)) as store:  # people label; the first run goes on to its end
            while (pair := store.next_pair("alice")) is not None:
                store.submit(pair["pair_id"], "left", "alice")
        _, err = first.communicate(timeout=OUTER_TIMEOUT_S)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["labels_used"] == 4 and summary["rounds"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(rows) == 3 and all(a < b for a, b in zip(steps, steps[1:], strict=False)), steps  # rounds 0..2, once


@pytest.mark.parametrize("command", [["text", "--algo", "grpo"], ["prefs", *TINY]])
@pytest.mark.parametrize("mode", [[], ["--overwrite"]])
def test_either_command_on_a_locked_out_is_refused_before_it_touches_anything(tmp_path, capsys, command, mode):
    """``rlhf-gym text`` takes the same lock as ``prefs`` (agents.cli.run_settings), before --overwrite moves
    anything aside; the holder here is a plain process holding the lock."""
    from agents.cli import main
    from tests.agents.test_rundir import _holder

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an earlier run's file: --overwrite would move it aside
    holder = _holder(out)
    try:
        assert main([*command, "--out", str(out), "--no-progress", *mode]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rlhf-gym {command[0]}: error: --out {out} is in use by another run (pid {holder.pid}, ")
        assert "\n" not in err and sorted(p.name for p in out.iterdir()) == ["config.json", LOCK_FILE]
    finally:
        holder.stdin.close()
        holder.wait(timeout=OUTER_TIMEOUT_S)
