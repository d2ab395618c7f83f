"""``rlhf-gym prefs`` on damaged runs and bad input: a one-line error with exit status 2 and nothing lost, or a
fallback to the previous checkpoint (issue 15, failure 2)."""

import hashlib
import json
import shutil

import pytest
import torch

from agents.cli import main
from agents.cli import prefs as prefs_cmd
from agents.loop.control.run import run_prefs
from agents.loop.preference_loop import LoopCallback
from agents.rundir import LOCK_FILE, RunDir, RunDirError
from tests.agents.cli.test_prefs import TINY, parse


def _tree(path):
    """Every file under ``path`` with a digest of its bytes: equal trees mean nothing was lost or changed."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err  # one line, no traceback (logging goes to caplog)
    assert err.startswith("rlhf-gym prefs: error: "), err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run: checkpoints round-0001 and round-0002 kept, latest.json names round-0002."""
    out = tmp_path_factory.mktemp("prefs") / "run"
    assert main(["prefs", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {
    "state.json": _truncate,
    "agent.zip": _truncate,
    "rng.pt": lambda p: p.unlink(),
}


def test_the_last_two_checkpoints_are_kept(finished_run):
    ckpts = finished_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.json", "round-0001", "round-0002"]
    assert json.loads((ckpts / "latest.json").read_text()) == {"checkpoint": "round-0002", "previous": "round-0001"}
    assert json.loads((ckpts / "round-0002" / "config.json").read_text()) == json.loads(
        (finished_run / "config.json").read_text())


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_resume_falls_back_to_the_previous_checkpoint_when_the_latest_is_damaged(run_copy, caplog, name):
    DAMAGE[name](run_copy / "checkpoints" / "round-0002" / name)
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    assert "checkpoint" in caplog.text and "round-0002" in caplog.text and "trying an older one" in caplog.text
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["finished"] and summary["labels_used"] == 12 and summary["rounds"] == 2  # round 2 done again
    ckpts = run_copy / "checkpoints"
    assert json.loads((ckpts / "latest.json").read_text()) == {"checkpoint": "round-0002", "previous": "round-0001"}
    assert (ckpts / "round-0002" / name).exists() and (ckpts / "round-0001").is_dir()


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_resume_with_no_loadable_checkpoint_is_a_one_line_error_and_changes_nothing(run_copy, capsys, name):
    for ckpt in ("round-0001", "round-0002"):
        DAMAGE[name](run_copy / "checkpoints" / ckpt / name)
    before = _tree(run_copy)
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 2
    err = _error_line(capsys)
    assert "no checkpoint of" in err and "round-0002 (" in err and "round-0001 (" in err
    assert "start a new run (--overwrite" in err
    assert _tree(run_copy) == before


def test_resume_with_a_truncated_latest_json_finds_the_newest_checkpoint(run_copy, caplog):
    _truncate(run_copy / "checkpoints" / "latest.json")
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    assert "latest.json is damaged" in caplog.text
    assert json.loads((run_copy / "summary.json").read_text())["rounds"] == 2  # resumed from round-0002: no rework


def test_resume_with_a_truncated_config_json_uses_the_checkpoints_copy_and_repairs_it(run_copy, caplog):
    good = json.loads((run_copy / "config.json").read_text())
    _truncate(run_copy / "config.json")
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    assert "using the copy in" in caplog.text
    assert json.loads((run_copy / "config.json").read_text())["config"] == good["config"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resume_of_a_cuda_run_on_a_cpu_machine_says_how_to_continue(run_copy, capsys):
    copies = [run_copy / "config.json", *(run_copy / "checkpoints").glob("round-*/config.json")]
    for path in copies:  # as if the run had been started with --device cuda on another machine
        saved = json.loads(path.read_text())
        saved["config"]["device"] = "cuda"
        path.write_text(json.dumps(saved))
    before = _tree(run_copy)
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 2
    err = _error_line(capsys)
    assert "sees no CUDA GPU" in err and f'set "device": "cpu" under "config" in {run_copy}/config.json' in err
    assert _tree(run_copy) == before
    saved = json.loads((run_copy / "config.json").read_text())
    saved["config"]["device"] = "cpu"  # what the message says to do
    (run_copy / "config.json").write_text(json.dumps(saved))
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 0


def test_resume_with_every_config_copy_damaged_is_a_one_line_error(run_copy, capsys):
    for path in [run_copy / "config.json", *(run_copy / "checkpoints").glob("round-*/config.json")]:
        _truncate(path)
    before = _tree(run_copy)
    assert main(["prefs", "--out", str(run_copy), "--resume", "--no-progress"]) == 2
    err = _error_line(capsys)
    assert "config.json cannot be read as a run's settings (JSONDecodeError" in err
    assert "nor can the copies in its checkpoints" in err and "restore it from a backup" in err
    assert _tree(run_copy) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    assert main(["prefs", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "--device cuda: this torch" in _error_line(capsys) and not (tmp_path / "r").exists()


@pytest.mark.parametrize("hyper, message", [
    ('{"n_step": 64}', "unknown ppo hyperparameter 'n_step'; did you mean n_steps?"),
    ('{"buffer_size": 1000}', "unknown ppo hyperparameter 'buffer_size'"),  # a DQN/SAC key
    ('{"seed": 3}', "set by rlhf-gym itself; use --seed"),
    ('[64]', "hyperparams takes a mapping or null, got list [64]"),
])
def test_unknown_hyperparameter_is_a_one_line_error(tmp_path, capsys, hyper, message):
    assert main(["prefs", "--hyperparams", hyper, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("hyper, message", [
    ('{"n_steps": -1}', "ppo refused its hyperparameters (`n_steps * n_envs` must be greater than 1"),
    ('{"batch_size": 0}', "ppo refused its hyperparameters (`batch_size` must be greater than 1"),
])
def test_a_value_sb3_refuses_is_a_one_line_error(tmp_path, capsys, hyper, message):
    out = tmp_path / "r"
    assert main(["prefs", *TINY, "--hyperparams", hyper, "--out", str(out)]) == 2
    assert message in _error_line(capsys)
    assert not (out / "checkpoints").exists()


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("precious")
    assert main(["prefs", *TINY, "--out", str(target)]) == 2
    assert "is a file, not a directory; choose another --out" in _error_line(capsys)
    assert target.read_text() == "precious"


def test_read_only_out_is_a_one_line_error(tmp_path, capsys):
    from tests.agents.test_rundir import _read_only_dir

    out = _read_only_dir(tmp_path)
    assert main(["prefs", *TINY, "--out", str(out)]) == 2
    assert "cannot be written" in _error_line(capsys)


class _Crash(LoopCallback):
    def on_round_end(self, loop, metrics):
        raise RuntimeError("power cut")  # after round 0 logged its metrics, before its checkpoint


def test_fresh_run_after_a_crash_before_the_first_checkpoint_refuses_then_moves_the_old_files_aside(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="power cut"):
        run_prefs(prefs_cmd.config_from_args(parse(TINY)), out, callbacks=[_Crash()])
    old_rows = RunDir(out, tensorboard=False).read_metrics()
    assert len(old_rows) == 1 and not (out / "checkpoints" / "latest.json").exists()
    before = _tree(out)

    assert main(["prefs", *TINY, "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert "holds files of an earlier run (config.json, metrics.jsonl, tb)" in err and "--overwrite" in err
    assert _tree(out) == before
    with pytest.raises(RunDirError, match="holds files of an earlier run"):  # the Python API refuses alike
        run_prefs(prefs_cmd.config_from_args(parse(TINY)), out)
    assert _tree(out) == before
    assert main(["prefs", "--out", str(out), "--resume"]) == 2
    assert "no checkpoint to resume from" in _error_line(capsys)
    assert main(["prefs", *TINY, "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pass one of them" in _error_line(capsys)

    assert main(["prefs", *TINY, "--out", str(out), "--overwrite"]) == 0
    rows = RunDir(out, tensorboard=False).read_metrics()
    assert len(rows) == 3 and [r["labels/used"] for r in rows][-1] == 12  # rounds 0..2 of the new run only
    (aside,) = out.glob("superseded-*")
    assert RunDir(aside, tensorboard=False).read_metrics() == old_rows  # the old run's files, moved, not deleted
    moved = set(before) - {LOCK_FILE}  # the lock belongs to the directory, not to a run: it stays
    assert {k.split("/", 1)[1] for k in _tree(out) if k.startswith("superseded-")} == moved
