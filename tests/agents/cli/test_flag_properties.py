"""Property-based checks of the command line's boundary (issue 25): whatever value a numeric flag gets, and whatever
bytes a file flag points to, ``rlhf-gym prefs / text / sft / label`` either accept it as a setting or refuse it in
one line ``rlhf-gym <cmd>: error: ...`` with exit status 2: never a traceback, and never a run directory left.

The flags are found by introspecting the commands' parsers, so a new flag is covered without editing this file: a
numeric flag is one whose ``type`` is ``int`` (read as ``agents.cli.int64``) or ``float``; a file flag is one whose
metavar says it reads a file or directory (``FILE``, ``TEXT|FILE``, ``FILE|DIR``, ``DIR|HUB_ID``, ``DIR``, or a
``MODULE:FUNCTION`` that may be ``file.py:function``), except the flags a command writes to (``WRITES``).

Nothing trains here: each command's ``run`` is replaced by its boundary, the step ``run`` takes before it creates
anything (``validate(args)``: parsing, the settings, the files, the env's spaces, the model's config; for ``label``
also opening the label store), and ``agents.cli.main`` is called in-process, so its one-line formatting is what is
checked. ``test_boundaries.py`` runs a few of these cases as real processes, the whole CLI path.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.cli import build_parser, int64, main

COMMANDS = ("prefs", "text", "sft", "label")
WRITES = {"--export-text", "--backup", "--out"}  # flags naming where a command writes, not what it reads
BOUNDED = settings(max_examples=1500, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _actions(command: str) -> list[argparse.Action]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return [a for a in sub._actions if a.option_strings]


def numeric_flags(command: str) -> list[argparse.Action]:
    return [a for a in _actions(command) if a.type in (int64, float)]


def reader_flags(command: str) -> list[argparse.Action]:
    return [a for a in _actions(command) if a.option_strings[-1] not in WRITES
            and re.search(r"FILE|DIR|:FUNCTION", str(a.metavar or ""))]


def test_the_introspection_finds_the_flags():
    """The convention the property tests rely on holds for the flags known today (a reader that lost its metavar
    would drop out of the tests silently)."""
    names = {c: {a.option_strings[-1] for a in reader_flags(c)} for c in COMMANDS}
    assert names["text"] == {"--model", "--tokenizer", "--prompts", "--preferences", "--reward-fn", "--sft-data",
                             "--config", "--instructions"}
    assert names["sft"] == {"--model", "--tokenizer", "--data", "--config", "--instructions"}
    assert names["prefs"] == {"--config", "--instructions"}
    assert names["label"] == {"--run", "--token-file"}
    numeric = {c: {a.option_strings[-1] for a in numeric_flags(c)} for c in COMMANDS}
    assert {"--seed", "--threads", "--samples", "--max-new-tokens", "--lora-alpha", "--reward-weights"} \
        <= numeric["text"]
    assert {"--teacher-eps", "--label-timeout", "--initial-fraction"} <= numeric["prefs"]
    assert {"--port", "--lease", "--request-timeout"} <= numeric["label"]
    assert sum(len(v) for v in numeric.values()) >= 60


@contextlib.contextmanager
def boundary_only():
    """Each command's ``run`` replaced by the checks it makes before it creates anything."""
    import agents.cli.label as label
    import agents.cli.prefs as prefs
    import agents.cli.sft as sft
    import agents.cli.text as text

    def label_boundary(args):
        label.validate(args)
        label._open_store(args).close()
        return 0

    runs = {prefs: lambda args: prefs.validate(args) and 0, text: lambda args: text.validate(args) and 0,
            sft: lambda args: sft.validate(args) and 0, label: label_boundary}
    saved = {module: module.run for module in runs}
    try:
        for module, run in runs.items():
            module.run = run
        yield
    finally:
        for module, run in saved.items():
            module.run = run


def check(command: str, argv: list[str], root: Path) -> None:
    """``rlhf-gym <command> <argv>`` (in-process, boundary only) accepts or refuses in one line; no run directory."""
    out = root / "out"
    target = ["--run", str(_label_run(root))] if command == "label" else ["--out", str(out)]
    err = io.StringIO()
    with boundary_only(), contextlib.redirect_stderr(err):
        rc = main([command, *argv, *target])  # an exception here is a traceback for the user: the test fails
    text = err.getvalue()
    shown = [a[:80] for a in argv]
    assert rc in (0, 2), (shown, rc, text[-2000:])
    if rc == 2:
        assert text.count("\n") == 1 and text.startswith(f"rlhf-gym {command}: error: "), (shown, text[-2000:])
    else:
        assert text == "", (shown, text[-2000:])
    assert not out.exists(), (shown, sorted(p.name for p in out.iterdir()))


def _label_run(root: Path) -> Path:
    run = root / "label-run"
    run.mkdir(exist_ok=True)
    return run


# -- numeric flags: NaN, inf, negative, zero, huge, wrong type -------------------------------------------------
SPECIAL = ["nan", "inf", "-inf", "-1", "0", "1e20", str(10**30), str(2**63), "abc", "", "-0.5", "1e-320", "1", "2",
           "0.5", "1e400"]
VALUES = st.one_of(st.sampled_from(SPECIAL), st.integers(-3, 3).map(str),
                   st.integers(-(10**40), 10**40).map(str), st.floats().map(repr))


@pytest.mark.parametrize("command", COMMANDS)
@BOUNDED
@given(data=st.data())
def test_numeric_flags_take_any_value_or_refuse_it_in_one_line(command, data):
    flags = data.draw(st.lists(st.sampled_from(numeric_flags(command)), min_size=1, max_size=3, unique=True))
    argv = []
    for action in flags:
        argv += [action.option_strings[-1], data.draw(VALUES)]
    with tempfile.TemporaryDirectory() as tmp:
        check(command, [*_base(command, Path(tmp), skip=()), *argv], Path(tmp))


# -- file flags: random bytes, not UTF-8, empty, deeply nested JSON, a directory ------------------------------
DEEP = "[" * 3000 + "]" * 3000
CONTENTS = st.one_of(
    st.binary(max_size=300),
    st.just(b"fine\n\xff\xfe not utf-8\n"),
    st.just(b""),
    st.sampled_from([DEEP, f'{{"prompt": {DEEP}}}', f'{{"text": "a"}}\n{DEEP}\n', "{" * 3000]).map(str.encode),
    st.sampled_from(["[1, 2]", "null", '"text"', '{"prompt": 3}', "a: [b", "- 1\n- 2"]).map(str.encode),
)
SUFFIXES = st.sampled_from(["", ".txt", ".jsonl", ".json", ".yaml", ".py"])
#: What a directory flag may find in its directory (a model's, a tokenizer's, a dataset's, a run's files).
DIR_FILES = st.sampled_from(["config.json", "tokenizer.json", "tokenizer_config.json", "adapter_config.json",
                             "dataset_info.json", "state.json", "labels.sqlite", "data-00000-of-00001.arrow"])


@pytest.mark.parametrize("command", COMMANDS)
@BOUNDED
@given(data=st.data())
def test_file_flags_read_any_bytes_or_refuse_them_in_one_line(command, data):
    action = data.draw(st.sampled_from(reader_flags(command)))
    flag = action.option_strings[-1]
    kind = data.draw(st.sampled_from(["file", "directory", "directory with a file", "missing", "name too long"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / ("x" * 300 if kind == "name too long" else "input")  # 300: more than a file name may hold
        if kind == "file":
            path = path.with_suffix(data.draw(SUFFIXES))
            path.write_bytes(data.draw(CONTENTS))
        elif kind.startswith("directory"):
            path.mkdir()
            if kind == "directory with a file":
                (path / data.draw(DIR_FILES)).write_bytes(data.draw(CONTENTS))
        value = f"{path}:reward" if ":FUNCTION" in str(action.metavar) else str(path)
        check(command, [*_base(command, root, skip=(flag,)), flag, value], root)


def _base(command: str, root: Path, skip: tuple[str, ...]) -> list[str]:
    """Valid inputs the command needs to reach the flag under test: prompts for ``text`` (its ``--model`` needs
    them), demonstrations for ``sft`` (it needs them)."""
    if command == "text" and "--prompts" not in skip:
        (root / "prompts.txt").write_text("The movie was\nThis book is\n")
        return ["--prompts", str(root / "prompts.txt")]
    if command == "sft" and "--data" not in skip:
        (root / "demos.jsonl").write_text(json.dumps({"prompt": "The movie was", "completion": " good"}) + "\n")
        return ["--data", str(root / "demos.jsonl")]
    return []


# -- every setting of the run config through --set (what --config files hold too) -------------------------------
def _config_fields(command: str) -> list[str]:
    import dataclasses

    from agents.loop.control.config import PrefsConfig
    from agents.loop.text.config import TextRLHFConfig
    from agents.loop.text.sft import SFTRunConfig

    config = {"prefs": PrefsConfig, "text": TextRLHFConfig, "sft": SFTRunConfig}[command]
    return [f.name for f in dataclasses.fields(config) if not f.name.isupper()]


JSON_VALUES = st.sampled_from(["NaN", "Infinity", "-Infinity", "-1", "0", "1e20", str(10**30), "abc", "null", "[]",
                               "{}", "true", "0.5", "2", '"2"', "[1, 2]", '{"a": 1}', DEEP])


@pytest.mark.parametrize("command", ["prefs", "text", "sft"])
@BOUNDED
@given(data=st.data())
def test_every_setting_takes_any_value_or_refuses_it_in_one_line(command, data):
    names = data.draw(st.lists(st.sampled_from(_config_fields(command)), min_size=1, max_size=2, unique=True))
    argv = []
    for name in names:
        argv += ["--set", f"{name}={data.draw(JSON_VALUES)}"]
    with tempfile.TemporaryDirectory() as tmp:
        check(command, [*_base(command, Path(tmp), skip=()), *argv], Path(tmp))
