"""``rlhf-gym label``: one-line errors with exit code 2 (nothing touched), the token from a file or the environment,
personal invitation links, and a real server process that honours them."""

import http.client
import json
import os
import subprocess
import sys
import threading

import pytest

from agents.cli import label as label_cmd
from agents.cli import main
from rewardmodels.feedback.label_store import LabelStore, Query, store_path
from tests.waiting import OUTER_TIMEOUT_S

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(label_cmd.TOKEN_ENV, raising=False)
    run = tmp_path / "run"
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text("p", "a", "b", pair_id="t-0"), Query.text("q", "c", "d", pair_id="t-1")])
    return run


def fails(capsys, argv, *expected):
    """Run the CLI; it must exit 2 with one line on stderr that contains every ``expected`` fragment."""
    assert main(["label", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlhf-gym label: error: "), err
    for fragment in expected:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--labels-per-pair", "0"], "--labels-per-pair must be >= 1"),
    (["--lease", "-5"], "--lease must be a number of seconds > 0"),
    (["--lease", "nan"], "--lease must be"),
    (["--lease", "inf"], "--lease must be"),
    (["--port", "70000"], "--port must be 0..65535"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--undo-window", "-1"], "--undo-window"),
    (["--host", "0.0.0.0"], "without an access token"),
    (["--host", "0.0.0.0", "--token", "short"], "at least 16"),
    (["--token", "has space"], "printable ASCII"),
    (["--public-url", "javascript:alert(1)"], "--public-url must be an http(s) URL"),
    (["--public-url", "javascript://x.org/%0aalert(1)"], "--public-url must be an http(s) URL"),
    (["--public-url", "ftp://labels.example.org"], "--public-url must be an http(s) URL"),
    (["--public-url", "labels.example.org"], "--public-url must be an http(s) URL"),
    (["--public-url", "https://labels.example.org/\njavascript:x"], "--public-url must be an http(s) URL"),
    (["--public-url", "https://l.example.org/?x=1"], "no query"),
    (["--invite", "ann", "--public-url", "javascript:alert(1)"], "--public-url must be an http(s) URL"),
    (["--max-connections-per-client", "0"], "--max-connections-per-client must be >= 1"),
    (["--request-timeout", "0"], "--request-timeout must be >= 1"),
    (["--trusted-proxy", "proxy.example.org"], "--trusted-proxy: trusted proxy 'proxy.example.org' is not an IP"),
])
def test_bad_arguments_are_one_line_and_exit_2(run_dir, capsys, argv, expected):
    before = store_path(run_dir).read_bytes()
    fails(capsys, ["--run", str(run_dir), *argv], expected)
    assert store_path(run_dir).read_bytes() == before


def test_flags_named_in_the_server_messages_exist():
    """The 403 page once told users to pass --origin, which `rlhf-gym label` never had."""
    import argparse
    import re
    from pathlib import Path

    import rewardmodels.feedback.webapp as webapp

    parser = argparse.ArgumentParser()
    label_cmd.add_parser(parser)
    known = set(parser._option_string_actions)
    root = Path(webapp.__file__).parent
    named = {flag for path in [*root.glob("*.py"), root.parent / "label_store.py", root.parent / "human.py"]
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", path.read_text())}
    assert "--public-url" in named and named <= known, sorted(named - known)


def test_labels_per_pair_that_differs_from_the_store(run_dir, capsys):
    fails(capsys, ["--run", str(run_dir), "--labels-per-pair", "3", "--port", "0"], "labels_per_pair=1")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_label_database_is_refused_and_left_as_it_was(tmp_path, capsys, damage):
    run = tmp_path / "run"
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text(f"prompt {i}" * 40, "a", "b") for i in range(300)])
    path = store_path(run)
    data = path.read_bytes()
    path.write_bytes(os.urandom(8192) if damage == "garbage" else data[: len(data) // 2])
    damaged = path.read_bytes()
    fails(capsys, ["--run", str(run), "--port", "0"], "is not a usable label database", "move it aside")
    assert path.read_bytes() == damaged  # nothing written over what may still be rescued


def unwritable_targets(tmp_path):
    """A directory, a path through a regular file, and read-only places (/proc even for root)."""
    (tmp_path / "a-file").write_text("x")
    targets = [tmp_path, tmp_path / "a-file" / "out.jsonl"]
    if os.path.isdir("/proc/self"):
        targets.append("/proc/rlhf-gym-test.jsonl")
    if os.geteuid() != 0:  # root writes through permission bits
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        targets.append(tmp_path / "ro" / "out.jsonl")
    return targets


def test_export_text_to_a_directory_or_an_unwritable_place_is_one_line(run_dir, tmp_path, capsys):
    with LabelStore(store_path(run_dir)) as store:
        store.submit("t-0", "left", "ann")
    for target in unwritable_targets(tmp_path):
        fails(capsys, ["--run", str(run_dir), "--export-text", str(target)], "--export-text", str(target))
    assert main(["label", "--run", str(run_dir), "--export-text", str(tmp_path / "out.jsonl")]) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["label"] == 1.0


def test_backup_and_a_plain_copy_hold_every_acknowledged_label_while_the_server_is_open(run_dir, tmp_path, capsys):
    """The server writes through the WAL; a `cp labels.sqlite` (the obvious backup) and `--backup FILE` (SQLite's
    online backup) made while it still runs both hold every label it acknowledged."""
    import shutil

    from rewardmodels.feedback.webapp import ServerThread, create_app

    with ServerThread(create_app(run_dir)) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        for pid, choice in (("t-0", "left"), ("t-1", "equal")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/api/label", body=json.dumps({"pair_id": pid, "label": choice, "labeller": "ann"}),
                         headers={"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
        assert main(["label", "--run", str(run_dir), "--backup", str(tmp_path / "backup.sqlite")]) == 0
        assert "2 labels" in capsys.readouterr().out
        (tmp_path / "copy").mkdir()
        shutil.copyfile(store_path(run_dir), tmp_path / "copy" / "labels.sqlite")  # without -wal and -shm
        for path in (tmp_path / "backup.sqlite", tmp_path / "copy" / "labels.sqlite"):
            with LabelStore(path) as copy:
                assert [(r["pair_id"], r["choice"]) for r in copy.rows()] == [("t-0", "left"), ("t-1", "equal")]
    for target in unwritable_targets(tmp_path):
        fails(capsys, ["--run", str(run_dir), "--backup", str(target)], "--backup", str(target))
    fails(capsys, ["--run", str(run_dir), "--backup", str(tmp_path / "b2"), "--export-text", str(tmp_path / "e")],
          "give one of --export-text, --backup at a time")


def test_token_file_problems(run_dir, tmp_path, capsys):
    fails(capsys, ["--run", str(run_dir), "--token-file", str(tmp_path / "missing")], "cannot read --token-file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    fails(capsys, ["--run", str(run_dir), "--token-file", str(empty)], "is empty")
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    fails(capsys, ["--run", str(run_dir), "--token-file", str(good), "--token", TOKEN], "not both")


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    label_cmd.add_parser(parser)
    file = tmp_path / "token"
    file.write_text(f"{TOKEN}\nignored second line\n")
    assert label_cmd.read_token(parser.parse_args(["--run", "x", "--token-file", str(file)])) == TOKEN
    monkeypatch.setenv(label_cmd.TOKEN_ENV, "from-the-environment")
    assert label_cmd.read_token(parser.parse_args(["--run", "x"])) == "from-the-environment"
    assert label_cmd.read_token(parser.parse_args(["--run", "x", "--token-file", str(file)])) == TOKEN
    monkeypatch.delenv(label_cmd.TOKEN_ENV)
    assert label_cmd.read_token(parser.parse_args(["--run", "x"])) is None


def test_invite_prints_a_link_and_revoke_cancels_it(run_dir, capsys):
    assert main(["label", "--run", str(run_dir), "--invite", "Ann", "--port", "8123"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://127.0.0.1:8123/?invite=")
    invite = link.split("invite=", 1)[1]
    with LabelStore(store_path(run_dir)) as store:
        assert store.person(invite) == "Ann"
    assert main(["label", "--run", str(run_dir), "--invite", "x", "--public-url", "https://l.example.org"]) == 0
    assert capsys.readouterr().out.startswith("https://l.example.org/?invite=")
    fails(capsys, ["--run", str(run_dir), "--invite", "ann\n", "--port", "8123"], "labeller name")
    fails(capsys, ["--run", str(run_dir), "--invite", "bob", "--port", "0"], "--port PORT")
    assert main(["label", "--run", str(run_dir), "--revoke", "ANN"]) == 0
    assert "revoked" in capsys.readouterr().out
    with LabelStore(store_path(run_dir)) as store:
        assert store.person(invite) is None


@pytest.mark.slow  # ~10 s, most of it importing torch in the child; 30 s on a busy 2-core machine
def test_public_server_process_reads_the_token_file_and_labels_as_the_invited_person(run_dir, tmp_path):
    """The real CLI on 0.0.0.0 (reached over loopback): the token is not on the command line, self-declared names
    are refused, and an invitation labels as its person."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with LabelStore(store_path(run_dir)) as store:
        invite = store.invite("Ann")
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "label", "--run", str(run_dir), "--host", "0.0.0.0",
                             "--port", "0", "--token-file", str(token_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=OUTER_TIMEOUT_S)  # its first line (importing torch on a busy 2-core machine is slow)
        assert line and "http://" in line[0], line
        port = int(line[0].rsplit(":", 1)[1].strip().rstrip("/"))
        assert TOKEN not in " ".join(proc.args)

        def call(method, path, headers, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=OUTER_TIMEOUT_S)
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={**headers, **({"Content-Type": "application/json"} if body else {})})
            response = conn.getresponse()
            out = response.status, json.loads(response.read() or b"null")
            conn.close()
            return out

        assert call("GET", "/api/progress", {})[0] == 401
        assert call("GET", "/api/progress", {"X-Label-Token": TOKEN})[0] == 200
        assert call("GET", "/api/next?labeller=eve", {"X-Label-Token": TOKEN})[0] == 403
        status, body = call("GET", "/api/next", {"X-Label-Invite": invite})
        assert status == 200 and body["pair"]["pair_id"] == "t-0"
        assert call("POST", "/api/label", {"X-Label-Invite": invite}, {"pair_id": "t-0", "label": "left"})[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=OUTER_TIMEOUT_S)
    assert proc.returncode == 0  # SIGTERM: a clean stop
    with LabelStore(store_path(run_dir)) as store:
        assert [(r["pair_id"], r["labeller"]) for r in store.rows()] == [("t-0", "Ann")]
