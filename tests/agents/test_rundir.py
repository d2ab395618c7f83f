import json

import pytest

from agents.rundir import RunDir, write_json


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
