"""Every flag and input file is checked where it enters, before a run directory exists (issue 25): bad input ends in
one line ``rlhf-gym <cmd>: error: ...`` and exit status 2, never a traceback, and leaves no run directory behind.
Each test here failed before its fix (the case it reproduces is in its name)."""

import errno
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from agents import cli
from agents.cli import main, run_settings
from agents.rundir import LOCK_FILE, discard_unstarted
from tests.agents.cli.test_text import checkpoint, prompt_file
from tests.waiting import OUTER_TIMEOUT_S


def _error(capsys, command):
    """The one line a refused command printed on stderr (logging goes to pytest's caplog, not stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"rlhf-gym {command}: error: "), err
    return err.strip()


# -- 1. argparse's own errors: one line pointing to --help, not the usage block ------------------------------------
@pytest.mark.parametrize(("argv", "line"), [
    (["prefs", "--seed", "1e20"], "rlhf-gym prefs: error: argument --seed: invalid int value: '1e20' (see rlhf-gym "
                                  "prefs --help)"),
    (["prefs", "--nope"], "rlhf-gym prefs: error: unrecognized arguments: --nope (see rlhf-gym prefs --help)"),
    (["text"], "rlhf-gym text: error: the following arguments are required: --out (see rlhf-gym text --help)"),
    (["sft", "--out", "x", "--epochs"], "rlhf-gym sft: error: argument --epochs: expected one argument (see rlhf-gym "
                                        "sft --help)"),
    (["label", "--run", "x", "--port", str(10**30)], "rlhf-gym label: error: argument --port: "
     "1000000000000000000000000000000 is more than a 64-bit integer holds (see rlhf-gym label --help)"),
    (["-v", "prefs", "--labeller", "x"], "rlhf-gym prefs: error: argument --labeller: invalid choice: 'x' (choose "
                                         "from teacher, human, mixed) (see rlhf-gym prefs --help)"),
    (["nope"], None),
    ([], "rlhf-gym: error: the following arguments are required: COMMAND (see rlhf-gym --help)"),
])
def test_argparse_errors_are_one_line(capsys, argv, line):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    if line is not None:
        # Python before 3.12 quotes the choices: compare without quotes
        assert err.strip().replace("'teacher', 'human', 'mixed'", "teacher, human, mixed") == line
    else:
        assert err.startswith("rlhf-gym: error: argument COMMAND: invalid choice: 'nope'"), err


def test_help_still_prints_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["prefs", "--help"])
    assert stop.value.code == 0 and "usage: rlhf-gym prefs" in capsys.readouterr().out


# -- 2. display and count flags -----------------------------------------------------------------------------------
def test_text_refuses_negative_samples(capsys, tmp_path):
    assert main(["text", "--samples", "-1", "--out", str(tmp_path / "run")]) == 2
    assert "--samples must be >= 0" in _error(capsys, "text")
    assert not (tmp_path / "run").exists()


def test_label_refuses_more_server_threads_than_it_can_start(capsys, tmp_path):
    assert main(["label", "--run", str(tmp_path), "--threads", str(2**40)]) == 2
    assert "--threads must be at most" in _error(capsys, "label")


# -- 3. an env whose spaces the run cannot use ---------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "says"), [
    (["--env", "Blackjack-v1"], "Blackjack-v1: cannot encode Tuple(Discrete(32), Discrete(11), Discrete(2))"),
    (["--env", "Pendulum-v1", "--algo", "dqn"], "dqn cannot act in Pendulum-v1's action space"),
])
def test_prefs_checks_the_envs_spaces_before_the_run_directory_exists(capsys, tmp_path, flags, says):
    out = tmp_path / "run"
    assert main(["prefs", *flags, "--out", str(out)]) == 2  # was: UnsupportedSpaceError traceback, rc 1
    assert says in _error(capsys, "prefs")
    assert not out.exists()


# -- 4. a failed start leaves no run directory behind ---------------------------------------------------------------
@pytest.mark.parametrize("existed", [False, True])
def test_max_new_tokens_beyond_the_models_positions_leaves_nothing(capsys, tmp_path, existed):
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    assert main(["text", "--max-new-tokens", "100000", "--out", str(out)]) == 2
    err = _error(capsys, "text")
    assert "--max-new-tokens 100000 with a prompt of one token or more takes 100001 positions, but the model (gpt2) " \
           "reads at most 128 tokens" in err
    assert out.exists() == existed and (not existed or os.listdir(out) == [])


def _command(tmp_path, monkeypatch, body):
    """Run ``rlhf-gym demo``, a command that starts a fresh run in ``tmp_path/run`` through ``run_settings`` (as
    ``prefs``, ``text`` and ``sft`` do) and runs ``body(out)`` in it; returns the exit status."""
    def add_parser(parser):
        parser.add_argument("--out")
        parser.add_argument("--resume", action="store_true")
        parser.add_argument("--overwrite", action="store_true")

    def run(args):
        with run_settings(args, load=None, build=lambda: {"settings": 1}) as (_, out):
            body(out)
        return 0

    module = types.ModuleType("demo_command")
    module.add_parser, module.run = add_parser, run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "demo", (module.__name__, "a test command"))
    return main(["demo", "--out", str(tmp_path / "run")])


def _starts(*, config=True, tb=True, more=()):
    """A run's start: config.json, tb/ with an empty event file, checkpoints/ (as RunDir makes it), then ``more``."""
    def body(out):
        (out / "checkpoints").mkdir()
        if config:
            (out / "config.json").write_text("{}")
        if tb:
            (out / "tb").mkdir()
            (out / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"\0" * 88)
        for name in more:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("kept")
        raise cli.UsageError("the start failed")
    return body


def test_a_start_that_fails_on_a_user_error_takes_back_what_it_wrote(tmp_path, monkeypatch, capsys):
    assert _command(tmp_path, monkeypatch, _starts()) == 2  # was: config.json kept it, --overwrite needed
    assert _error(capsys, "demo") == "rlhf-gym demo: error: the start failed"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("kept", "why"), [
    ("checkpoints/round-0000/state.json", "a checkpoint"),
    ("metrics.jsonl", "the run logged: it started"),
    ("sft/model/config.json", "a finished SFT stage"),
])
def test_a_run_that_started_keeps_everything(tmp_path, monkeypatch, capsys, kept, why):
    assert _command(tmp_path, monkeypatch, _starts(more=[kept])) == 2, why
    out = tmp_path / "run"
    assert (out / kept).read_text() == "kept" and (out / "config.json").exists() and (out / "tb").is_dir(), why


def test_files_that_are_not_a_runs_stay_and_so_does_a_directory_that_existed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _command(tmp_path, monkeypatch, _starts(more=["labels.sqlite", "clips/a.gif"])) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", "labels.sqlite", "clips", LOCK_FILE])
    assert (out / "notes.txt").read_text() == "mine" and (out / "clips" / "a.gif").read_text() == "kept"


def test_an_interrupted_or_buggy_start_is_left_as_it_was(tmp_path, monkeypatch):
    def bug(out):
        (out / "config.json").write_text("{}")
        raise ZeroDivisionError("a bug keeps its evidence")
    with pytest.raises(ZeroDivisionError):
        _command(tmp_path, monkeypatch, bug)
    assert (tmp_path / "run" / "config.json").exists()


def test_discard_unstarted_touches_only_a_runs_start(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "mine.txt").write_text("x")
    assert discard_unstarted(tmp_path) and sorted(os.listdir(tmp_path)) == ["mine.txt"]
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    assert not discard_unstarted(tmp_path) and (tmp_path / "config.json").exists()


# -- 5. file readers: their own error, naming the file and line ----------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000  # beyond Python's recursive JSON parser (RecursionError)


@pytest.mark.parametrize(("command", "flag", "name", "content", "says"), [
    ("text", "--prompts", "p.txt", b"fine\n\xff\xfe bad\n", "p.txt:2: not UTF-8 text (byte 0xff)"),
    ("text", "--prompts", "p.jsonl", f'{{"prompt": "a"}}\n{{"prompt": {DEEP}}}\n'.encode(),
     "p.jsonl:2: not valid JSON (nested too deeply"),
    ("text", "--preferences", "f.json", DEEP.encode(), "f.json:1: not valid JSON (nested too deeply"),
    ("text", "--preferences", "f.jsonl", b'{"prompt": "\xc3"}', "f.jsonl:1: not UTF-8 text (byte 0xc3)"),
    ("text", "--sft-data", "d.jsonl", DEEP.encode(), "d.jsonl:1: not valid JSON (nested too deeply"),
    ("sft", "--data", "d.jsonl", b"\x80abc", "d.jsonl:1: not UTF-8 text (byte 0x80)"),
    ("sft", "--data", "d.json", DEEP.encode(), "d.json:1: not valid JSON (nested too deeply"),
    ("sft", "--data", "d.jsonl", f"{DEEP}\n".encode(), "d.jsonl:1: not valid JSON (nested too deeply"),
    ("prefs", "--instructions", "guide.txt", b"judge \xff", "--instructions"),
    ("prefs", "--config", "run.json", DEEP.encode(), "--config"),
])
def test_file_readers_refuse_bad_bytes_in_one_line(capsys, tmp_path, command, flag, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "run"
    assert main([command, flag, str(path), "--out", str(out)]) == 2  # was: RecursionError / UnicodeDecodeError
    err = _error(capsys, command)
    assert says in err and str(path) in err, err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--hyperparams", "--set"])
def test_deeply_nested_json_on_the_command_line(capsys, tmp_path, flag):
    value = "[" * 5000 + "]" * 5000
    assert main(["prefs", flag, value if flag == "--hyperparams" else f"hyperparams={value}", "--out",
                 str(tmp_path / "run")]) == 2
    _error(capsys, "prefs")
    assert not (tmp_path / "run").exists()


def test_a_damaged_label_store_in_a_fresh_text_run(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "labels.sqlite").write_bytes(os.urandom(4096))
    assert main(["text", "--labeller", "human", "--pairs", "4", "--out", str(out)]) == 2
    assert "labels.sqlite is not a usable label database" in _error(capsys, "text")
    assert sorted(os.listdir(out)) in (["labels.sqlite", LOCK_FILE], ["clips", "labels.sqlite", LOCK_FILE])


# -- 6. the model: LoRA targets, an encoder, lengths beyond its positions ------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    flags, _ = checkpoint(root, "llama")
    return [*flags, "--prompts", str(prompt_file(root, False))]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("bert") / "bert"
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(("command", "flags", "says"), [
    ("text", ["--lora-r", "4", "--lora-targets", "q_proj,nope_proj"], "LoRA targets nope_proj: no module of "
                                                                      "LlamaForCausalLM is named so"),
    ("sft", ["--lora-r", "4", "--lora-targets", "nope_proj"], "LoRA targets nope_proj"),
    ("text", ["--max-new-tokens", "64"], "the model (llama) reads at most 64 tokens"),
    ("text", ["--max-new-tokens", "8", "--max-prompt-tokens", "60"], "--max-prompt-tokens 60 with --max-new-tokens 8 "
                                                                     "takes 68 positions"),
    ("sft", ["--max-length", "65"], "--max-length 65 takes 65 positions"),
])
def test_model_checks_before_anything_is_written(capsys, tmp_path, llama, command, flags, says):
    out = tmp_path / "run"
    data = llama if command == "text" else [*llama[:4], "--data", str(_demos(tmp_path))]
    assert main([command, *data, *flags, "--out", str(out)]) == 2
    assert says in _error(capsys, command)
    assert not out.exists()


@pytest.mark.parametrize("command", ["text", "sft"])
def test_an_encoder_is_no_policy(capsys, tmp_path, llama, bert, command):
    out = tmp_path / "run"
    data = ["--prompts", llama[-1]] if command == "text" else ["--data", str(_demos(tmp_path))]
    assert main([command, "--model", bert, "--tokenizer", llama[3], *data, "--out", str(out)]) == 2  # was: KeyError
    assert f"model {bert!r} is an encoder (bert, a masked LM)" in _error(capsys, command)
    assert not out.exists()


def _demos(tmp_path: Path) -> Path:
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": "the movie was", "completion": " good"}) + "\n" for _ in range(6)))
    return path


# -- 7. a full disk -------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch):
    import textenv.files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write/fsync raise: no file name

    monkeypatch.setattr(textenv.files.os, "fsync", full)
    out = tmp_path / "run"
    flags = ["--labels", "4", "--steps", "2048", "--rounds", "1", "--initial-steps", "256", "--segment-len", "20",
             "--ensemble", "1", "--reward-epochs", "1", "--eval-episodes", "1", "--eval-every", "0", "--no-progress"]
    assert main(["prefs", *flags, "--out", str(out)]) == 2
    err = _error(capsys, "prefs")
    assert f"no space left writing {out / 'config.json'} (No space left on device): free some space; run the " \
           "command again" in err, err
    assert not out.exists()  # nothing had started: what was written is taken back


# -- the whole CLI path, in real processes -------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "says"), [
    (["prefs", "--env", "Blackjack-v1"], "Blackjack-v1: cannot encode Tuple"),
    (["text", "--samples", "-1"], "--samples must be >= 0"),
    (["prefs", "--seed", "1e20"], "invalid int value: '1e20'"),
])
def test_in_a_real_process(tmp_path, argv, says):
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "agents.cli", *argv, "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=OUTER_TIMEOUT_S)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"rlhf-gym {argv[0]}: error: ") and says in done.stderr, done.stderr
    assert not out.exists()
