import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agents.rundir import (
    LOCK_FILE,
    DeviceError,
    RunDir,
    RunDirBusy,
    RunDirError,
    check_device,
    checkpoint_candidates,
    earlier_run_files,
    lock_run_dir,
    prepare_out,
    signals_deferred,
    write_json,
)
from tests.waiting import OUTER_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]


def test_rundir_writes_config_metrics_summary_and_png(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"lr": 1e-3, "path": tmp_path})
    for step in range(3):
        run.log(step, {"train/loss": 1.0 / (step + 1), "eval/return": step * 2.0})
    run.write_summary({"true_return_mean": 4.0})
    png = run.plot([("loss", ["train/loss"]), ("return", ["eval/return"])])
    run.close()
    assert json.loads((run.path / "config.json").read_text())["lr"] == 1e-3
    assert [r["train/loss"] for r in run.read_metrics()] == [1.0, 0.5, 1.0 / 3]
    assert json.loads(run.summary_path.read_text()) == {"true_return_mean": 4.0}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run.path / "tb").iterdir())


def test_write_json_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "s.json"
    write_json(target, {"a": 1})

    class Unserialisable:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_json(target, {"a": Unserialisable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


# -- run directories a user can get wrong ---------------------------------------------------------------------------
def test_out_that_is_a_file_is_refused_with_the_path(tmp_path):
    target = tmp_path / "not-a-dir"
    target.write_text("mine")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        prepare_out(target)
    with pytest.raises(RunDirError, match="cannot be written"):  # a file where a parent directory should be
        RunDir(target / "run")
    assert target.read_text() == "mine"


def _read_only_dir(tmp_path):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro / "run"
    # root writes through permission bits: use a filesystem root cannot create directories in either
    probe = Path("/sys/rlhf-gym-test-run")
    try:
        probe.mkdir()
    except OSError:
        return probe
    probe.rmdir()
    pytest.skip("no read-only location for root on this machine")


def test_read_only_out_is_refused_before_anything_runs(tmp_path):
    out = _read_only_dir(tmp_path)
    with pytest.raises(RunDirError, match=r"cannot be written \(.+\); choose a directory you can write to"):
        prepare_out(out)
    assert not out.exists()


def test_fresh_run_never_appends_to_an_earlier_runs_files(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out, tensorboard=False)  # a run that crashed before its first checkpoint: config and one metrics row
    run.write_config({"seed": 1})
    run.log(0, {"a": 1.0})
    (run.checkpoints / ".round-0000.tmp-x").mkdir()  # and a checkpoint save cut short
    (out / "labels.sqlite").write_bytes(b"people's labels")
    with pytest.raises(RunDirError, match=r"files of an earlier run \(config.json, metrics.jsonl, checkpoints\); pass "
                                          "--overwrite"):
        prepare_out(out)
    assert prepare_out(out, resume=True) == out  # --resume decides for itself whether there is a checkpoint
    prepare_out(out, overwrite=True)
    (aside,) = out.glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl"]
    assert RunDir(aside).read_metrics() == [{"step": 0, "a": 1.0}]  # moved, not deleted
    assert (out / "labels.sqlite").read_bytes() == b"people's labels"  # people's work stays where it is
    assert earlier_run_files(out) == [] and prepare_out(out) == out
    RunDir(out, tensorboard=False)  # an empty checkpoints/ is no earlier run
    assert earlier_run_files(out) == []


def test_commit_keeps_the_last_two_checkpoints_and_candidates_fall_back(tmp_path):
    run = RunDir(tmp_path / "run")
    for r in range(4):
        (run.checkpoints / f"round-{r:04d}").mkdir()
        run.commit_checkpoint(f"round-{r:04d}")
        (run.checkpoints / f".round-{r + 1:04d}.tmp-x{r}").mkdir()  # a save cut short: gone at the next commit
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [".round-0004.tmp-x3", "latest.json", "round-0002",
                                                                 "round-0003"]
    assert [p.name for p in checkpoint_candidates(run.path)] == ["round-0003", "round-0002"]
    (run.checkpoints / "latest.json").write_text('{"checkpoint": "rou')  # truncated: every directory, newest first
    os.utime(run.checkpoints / "round-0002", (1, 1))
    assert [p.name for p in run.checkpoint_candidates()] == ["round-0003", "round-0002"]
    (run.checkpoints / "round-0004").mkdir()  # a run that fell back to round-0002 keeps it, not the damaged one
    run.commit_checkpoint("round-0004", previous="round-0002")
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest.json", "round-0002", "round-0004"]  # no temp
    assert checkpoint_candidates(tmp_path / "elsewhere") == []
    write_json(run.checkpoints / "latest.json", {"checkpoint": "round-0009", "previous": None})  # names a lost one
    assert [p.name for p in run.checkpoint_candidates()][0] == "round-0004"


def test_check_device_names_what_is_missing():
    assert check_device("cpu") == "cpu" and check_device(None) is None and check_device("auto") == "auto"
    with pytest.raises(DeviceError, match="not a torch device"):
        check_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU; use --device cpu"):
            check_device("cuda")
    else:
        with pytest.raises(DeviceError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_signals_are_delivered_after_the_deferred_block():
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *_: got.append("delivered"))
    try:
        with signals_deferred((signal.SIGUSR1,)):
            os.kill(os.getpid(), signal.SIGUSR1)  # to this process: delivered before kill() returns, held back here
            got.append("saved")
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == ["saved", "delivered"]


# -- one process per run directory ----------------------------------------------------------------------------------
def _holder(out):
    """Another process holding ``out``'s lock until its stdin closes; returned once it says it holds it."""
    script = textwrap.dedent(f"""
        import sys
        from agents.rundir import lock_run_dir
        with lock_run_dir({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the event: blocks until the holder has the lock (or has died)
    assert line == "locked\n", (line, proc.stderr.read())
    return proc


def test_a_second_process_is_refused_with_the_holders_pid_and_nothing_is_moved(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out, tensorboard=False)
    run.write_config({"seed": 1})
    holder = _holder(out)
    try:
        assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)
        for attempt in (lambda: lock_run_dir(out).__enter__(), lambda: prepare_out(out, overwrite=True),
                        lambda: prepare_out(out, resume=True)):
            with pytest.raises(RunDirBusy, match=rf"--out {out} is in use by another run \(pid {holder.pid}, "):
                attempt()
        assert not list(out.glob("superseded-*")) and (out / "config.json").exists()  # --overwrite moved nothing
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=OUTER_TIMEOUT_S) == 0
    with lock_run_dir(out):  # released when its holder ends
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_killed_holders_lock_is_free_at_once(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.kill()  # kill -9: no cleanup code runs; the kernel drops the flock with the process
    holder.wait(timeout=OUTER_TIMEOUT_S)
    holder.stdin.close()
    assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)  # a stale file, no stale lock
    with lock_run_dir(out):
        pass


def test_the_lock_is_reentrant_in_a_process_and_leaves_no_empty_directory_it_created(tmp_path):
    out = tmp_path / "new"
    with lock_run_dir(out):
        with lock_run_dir(out):  # the CLI holds it, the run takes it again
            assert prepare_out(out) == out
        assert (out / LOCK_FILE).exists()  # still held by the outer block
    assert not out.exists()  # nothing was written: a refused command leaves no run directory behind
    with lock_run_dir(out):
        RunDir(out, tensorboard=False).write_config({"seed": 1})
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", LOCK_FILE]
    existing = tmp_path / "existing"
    existing.mkdir()
    with lock_run_dir(existing):
        pass
    assert existing.is_dir()  # a directory the user made stays


def test_cut_metrics_drops_the_rows_after_a_checkpoint_atomically(tmp_path):
    run = RunDir(tmp_path / "run", tensorboard=False)
    assert run.metrics_size() == 0 and run.cut_metrics(0) == 0
    run.log(0, {"a": 0.0})
    run.log(10, {"a": 1.0})
    size = run.metrics_size()  # what a checkpoint after step 10 records
    run.log(20, {"a": 2.0})  # the round killed before its checkpoint
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 30, "a"')  # and a row cut in half by kill -9
    assert run.cut_metrics(size) == 2
    assert [r["step"] for r in run.read_metrics()] == [0, 10]
    assert run.metrics_path.read_bytes().endswith(b"\n") and sorted(p.name for p in run.path.iterdir()) == [
        "checkpoints", "metrics.jsonl"]  # no temporary file left
    assert run.cut_metrics(size + 100) == 0 and [r["step"] for r in run.read_metrics()] == [0, 10]  # shorter: kept
