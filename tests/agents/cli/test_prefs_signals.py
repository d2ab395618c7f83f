"""Ctrl-C and SIGTERM stop ``rlhf-gym prefs`` within seconds, with a last checkpoint and one line saying how to resume
(issue 15, failure 3): real subprocesses, real signals, real pygame/SDL rendering the clips people label."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agents.cli import main
from rewardmodels.feedback.label_store import LabelStore, store_path
from tests.waiting import OUTER_TIMEOUT_S, wait_until

ROOT = Path(__file__).resolve().parents[3]
HYPER = '{"n_envs": 4, "n_steps": 64, "batch_size": 128, "n_epochs": 2}'
# Every label is asked in round 0 (--initial-fraction 1): the run waits for people once, then trains alone.
PEOPLE = ["--labeller", "human", "--labels", "4", "--initial-fraction", "1", "--steps", "2048", "--rounds", "2",
          "--initial-steps", "512", "--segment-len", "20", "--ensemble", "2", "--reward-epochs", "5",
          "--eval-episodes", "2", "--eval-every", "0", "--no-progress", "--hyperparams", HYPER]
# Long enough that it is still training when the signal comes.
TRAINING = ["--labels", "20", "--steps", "400000", "--rounds", "100", "--initial-steps", "512", "--segment-len", "20",
            "--ensemble", "2", "--reward-epochs", "2", "--eval-every", "0", "--no-progress", "--hyperparams", HYPER]


def _env():
    env = dict(os.environ)
    env.pop("SDL_NO_SIGNAL_HANDLERS", None)  # the code under test must set it, not this test process
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a run in a terminal: the suite itself may run under `cmd &`


def _start(argv):
    return subprocess.Popen([sys.executable, "-m", "agents.cli", "prefs", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for(proc, ready, what, timeout=OUTER_TIMEOUT_S):
    """Wait for the event ``ready()`` of the running CLI ``proc``; fail at once if it ends first."""
    try:
        wait_until(ready, what, timeout=timeout, alive=lambda: proc.poll() is None)
    except AssertionError:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no {what} (rc {proc.returncode}):\n{err[-3000:]}")


def _latest(out):
    try:
        return json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


def _waiting_for_people(out):
    if _latest(out) != "round-0000-labelling" or not store_path(out).exists():
        return False
    with LabelStore(store_path(out)) as store:
        return store.progress()["queued"] == 4  # clips drawn (pygame/SDL initialised), pairs queued


def _stop(proc, sig):
    """Send ``sig`` and wait for the process to end. No bound on the time it takes but the outer one: a run that
    ignored the signal would go on (waiting for people for ever, or training a 400k-step budget) and fail here."""
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=OUTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {OUTER_TIMEOUT_S:.0f} s after {sig.name}")
    return proc.returncode, err


SIGNALS = {"SIGTERM": signal.SIGTERM, "Ctrl-C": signal.SIGINT}


def _start_both(tmp_path, argv, ready, what):
    """One run per signal, side by side (half the wall time of one after the other); returns {name: (proc, out)}."""
    runs = {}
    for name in SIGNALS:
        out = tmp_path / name
        runs[name] = (_start([*argv, "--out", str(out)]), out)
    for proc, out in runs.values():
        _wait_for(proc, lambda out=out: ready(out), what)
    return runs


def _check_stopped(name, proc):
    """Send the signal; the run must end with 128 + signal, no traceback; returns its last line. (Before the fix, a
    run waiting for people was still running 60 s after SIGTERM: it waited for them, for ever.)"""
    rc, err = _stop(proc, SIGNALS[name])
    assert rc == 128 + SIGNALS[name], (name, rc, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rlhf-gym prefs: interrupted ({name}): "), last
    return last


@pytest.mark.slow  # two real runs side by side, plus a resume: about a minute on 2 loaded cores
def test_each_signal_stops_a_run_waiting_for_people_and_resume_keeps_their_labels(tmp_path):
    runs = _start_both(tmp_path, PEOPLE, _waiting_for_people, "pairs queued for people")
    for name, (proc, out) in runs.items():  # its pairs are queued: it waits for people now, or is about to
        last = _check_stopped(name, proc)
        assert last.endswith(f"checkpoint checkpoints/round-0000-labelling kept; resume with: rlhf-gym prefs --out "
                             f"{out} --resume"), last
    # People label while the loop is down; the resumed loop asks for the same four pairs and finds their labels.
    out = runs["SIGTERM"][1]
    with LabelStore(store_path(out)) as store:
        for _ in range(4):
            pair = store.next_pair("alice")
            store.submit(pair["pair_id"], "left", "alice")
    assert main(["prefs", "--out", str(out), "--resume", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["labels_used"] == 4
    with LabelStore(store_path(out)) as store:
        assert store.progress() == {"queued": 4, "labelled": 4, "labels": 4}  # nothing queued twice


@pytest.mark.slow  # two real runs side by side, plus a resume: about a minute on 2 loaded cores
def test_each_signal_stops_a_training_run_and_its_last_checkpoint_resumes(tmp_path):
    from agents.loop.control.config import PrefsConfig
    from agents.loop.control.run import build_loop

    runs = _start_both(tmp_path, TRAINING, lambda out: _latest(out) is not None, "first checkpoint")
    for name, (proc, out) in runs.items():
        last = _check_stopped(name, proc)  # a checkpoint is committed: the agent is learning round 1 (or later)
        assert "checkpoint checkpoints/round-" in last and last.endswith(f"--out {out} --resume"), last
        loop = build_loop(PrefsConfig.load(out), out)
        try:
            assert loop.resume() and loop.state.round >= 0 and loop.state.labels_used > 0
        finally:
            loop.agent.close()


def test_pygame_leaves_sigterm_to_the_process_once_clips_are_loaded():
    """SDL (pygame draws the classic-control clips) installs a SIGTERM handler that only queues a quit event, unless
    ``rewardmodels.feedback.clips`` told it not to: with a frame drawn, SIGTERM must still end the process."""
    script = textwrap.dedent("""
        import os, signal, time
        import rewardmodels.feedback.clips  # noqa: F401  (what every human-labelling path imports first)
        import gymnasium as gym
        env = gym.make("CartPole-v1", render_mode="rgb_array")
        env.reset(seed=0)
        env.render()  # pygame.init(): SDL would install its handlers here
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("survived SIGTERM", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=OUTER_TIMEOUT_S)
    assert proc.returncode == -signal.SIGTERM and "survived" not in proc.stdout, (proc.returncode, proc.stderr)
