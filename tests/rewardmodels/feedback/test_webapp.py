"""The labelling web app: API contract, security (tokens, traversal, validation), load, crash safety, the CLI."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agents.cli import label as label_cmd
from rewardmodels.feedback.clips import render_gif
from rewardmodels.feedback.human import HumanLabeller
from rewardmodels.feedback.label_store import LabelStore, Query, store_path
from rewardmodels.feedback.webapp import InsecureBindError, ServerThread, create_app, start_server
from tests.waiting import OUTER_TIMEOUT_S

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    clips = run / "clips"
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    render_gif(frames, clips / "a.gif")
    render_gif(frames + 200, clips / "b.gif")
    (tmp_path / "secret.gif").write_bytes(b"GIF89a outside the clip dir")
    (clips / "escape.gif").symlink_to(tmp_path / "secret.gif")
    (clips / "notes.txt").write_text("not a clip")
    (clips / ".hidden.gif").write_bytes(b"GIF89a hidden")
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.segment("a.gif", "b.gif", pair_id="seg-0"),
                       Query.text("Say hi", "hi", "<b>hello</b>", pair_id="txt-0")])
    return run


def n_labels(run):
    with LabelStore(store_path(run)) as store:
        return store.progress()["labels"]


def post_label(client, body, **kw):
    return client.post("/api/label", data=json.dumps(body), content_type="application/json", **kw)


# -- API contract ----------------------------------------------------------------------------------------------------
def test_page_next_label_and_clip(run_dir):
    client = create_app(run_dir).test_client()
    page = client.get("/")
    assert page.status_code == 200 and b"app.js" in page.data and b"btn-left" in page.data
    assert client.get("/static/app.js").status_code == 200
    assert page.headers["X-Content-Type-Options"] == "nosniff" and "default-src 'self'" in page.headers[
        "Content-Security-Policy"]

    nxt = client.get("/api/next?labeller=ann").get_json()
    assert nxt["pair"] == {"pair_id": "seg-0", "kind": "segment", "clip_a": "/clips/a.gif", "clip_b": "/clips/b.gif"}
    assert nxt["progress"] == {"queued": 2, "labelled": 0, "labels": 0}
    clip = client.get(nxt["pair"]["clip_a"])
    assert clip.status_code == 200 and clip.mimetype == "image/gif" and clip.data.startswith(b"GIF8")

    # bob is not shown ann's pair while she holds it
    assert client.get("/api/next?labeller=bob").get_json()["pair"]["pair_id"] == "txt-0"
    ok = post_label(client, {"pair_id": "seg-0", "label": "right", "labeller": "ann"})
    assert ok.status_code == 200 and ok.get_json()["label"] == 0.0
    skip = post_label(client, {"pair_id": "txt-0", "label": "skip", "labeller": "bob"})
    assert skip.status_code == 200 and skip.get_json()["label"] is None
    assert client.get("/api/progress").get_json() == {"queued": 2, "labelled": 2, "labels": 2, "notes": {}}
    assert client.get("/api/next?labeller=ann").get_json()["pair"] is None


def test_unknown_and_already_labelled_pairs_are_4xx_and_write_nothing(run_dir):
    client = create_app(run_dir).test_client()
    unknown = post_label(client, {"pair_id": "nope", "label": "left", "labeller": "ann"})
    assert unknown.status_code == 404 and "nope" in unknown.get_json()["error"]
    assert n_labels(run_dir) == 0
    assert post_label(client, {"pair_id": "seg-0", "label": "left", "labeller": "ann"}).status_code == 200
    again = post_label(client, {"pair_id": "seg-0", "label": "right", "labeller": "bob"})
    assert again.status_code == 409 and "already labelled" in again.get_json()["error"]
    with LabelStore(store_path(run_dir)) as store:
        assert [(r["choice"], r["labeller"]) for r in store.rows()] == [("left", "ann")]


GOOD = {"pair_id": "seg-0", "label": "left", "labeller": "ann"}


@pytest.mark.parametrize("body, status", [
    ("not json", 400),
    ("[1, 2]", 400),
    ('"left"', 400),
    ("{}", 400),
    (json.dumps({**GOOD, "extra": 1}), 400),
    (json.dumps({k: v for k, v in GOOD.items() if k != "label"}), 400),
    (json.dumps({**GOOD, "label": 1}), 400),
    (json.dumps({**GOOD, "label": "LEFT"}), 400),
    (json.dumps({**GOOD, "label": None}), 400),
    (json.dumps({**GOOD, "label": ["left"]}), 400),
    (json.dumps({**GOOD, "pair_id": 7}), 400),
    (json.dumps({**GOOD, "pair_id": "../seg-0"}), 400),
    (json.dumps({**GOOD, "pair_id": {"$ne": 1}}), 400),
    (json.dumps({**GOOD, "labeller": ""}), 400),
    (json.dumps({**GOOD, "labeller": "x" * 65}), 400),
    (json.dumps({**GOOD, "labeller": "<img src=x onerror=alert(1)>"}), 400),
    (json.dumps({**GOOD, "labeller": "ann\r\nX-Injected: 1"}), 400),
    (json.dumps({**GOOD, "labeller": 5}), 400),
    (json.dumps({**GOOD, "labeller": "a" * 20_000}), 413),
])
def test_malformed_label_bodies_are_refused_and_nothing_is_written(run_dir, body, status):
    client = create_app(run_dir).test_client()
    response = client.post("/api/label", data=body, content_type="application/json")
    assert response.status_code == status, response.data
    assert response.get_json()["ok"] is False and response.get_json()["error"]
    assert n_labels(run_dir) == 0


def test_label_must_be_sent_as_json(run_dir):
    client = create_app(run_dir).test_client()
    form = client.post("/api/label", data=GOOD)  # what a cross-site <form> could send
    assert form.status_code == 415
    plain = client.post("/api/label", data=json.dumps(GOOD), content_type="text/plain")
    assert plain.status_code == 415
    assert client.get("/api/next?labeller=%3Cscript%3E").status_code == 400
    assert client.get("/api/next").status_code == 400
    assert n_labels(run_dir) == 0


@pytest.mark.parametrize("path", [
    "/clips/../labels.sqlite", "/clips/%2e%2e/labels.sqlite", "/clips/..%2flabels.sqlite",
    "/clips/..%5clabels.sqlite", "/clips//etc/passwd", "/clips/%2fetc%2fpasswd", "/clips/escape.gif",
    "/clips/notes.txt", "/clips/.hidden.gif", "/clips/a.gif%00.txt", "/clips/missing.gif", "/clips/",
    "/clips/../../secret.gif",
])
def test_path_traversal_is_refused(run_dir, path):
    response = create_app(run_dir).test_client().get(path)
    assert response.status_code == 404
    assert b"SQLite" not in response.data and b"outside" not in response.data


def test_raw_traversal_over_a_real_socket(run_dir):
    """Test clients may normalise paths; a raw request line shows what the server itself does with them."""
    with ServerThread(create_app(run_dir)) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        for target in ("/clips/../labels.sqlite", "/clips/../../secret.gif", "/clips/%2e%2e/%2e%2e/secret.gif"):
            with socket.create_connection(("127.0.0.1", port), timeout=OUTER_TIMEOUT_S) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                reply = b"".join(iter(lambda: s.recv(65536), b""))
            assert reply.split(b" ", 2)[1] in (b"400", b"404"), (target, reply[:200])
            assert b"SQLite format" not in reply and b"outside the clip dir" not in reply


def test_cross_site_browser_requests_are_refused(run_dir):
    client = create_app(run_dir).test_client()
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert post_label(client, GOOD, headers=cross).status_code == 403
    assert client.get("/api/next?labeller=ann", headers=cross).status_code == 403
    assert client.get("/clips/a.gif", headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    assert client.get("/", headers=cross).status_code == 200  # following a link to the page is fine
    assert n_labels(run_dir) == 0
    assert post_label(client, GOOD, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


# -- tokens and binding ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_non_loopback_bind_needs_a_token(run_dir, host):
    with pytest.raises(InsecureBindError, match="--token"):
        create_app(run_dir, host=host)
    with pytest.raises(InsecureBindError):
        start_server(create_app(run_dir), host=host, port=0)  # refused before binding anything


def test_cli_refuses_a_public_bind_without_token(run_dir, monkeypatch, capsys):
    from agents.cli import main

    monkeypatch.delenv(label_cmd.TOKEN_ENV, raising=False)
    # returns at once, in one line: it never reaches serve_forever
    assert main(["label", "--run", str(run_dir), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhf-gym label: error: refusing to serve on '0.0.0.0'") and "\n" not in err


def test_token_is_checked_on_every_request(run_dir):
    client = create_app(run_dir, host="0.0.0.0", token=TOKEN, max_failures=100).test_client()
    with LabelStore(store_path(run_dir)) as store:
        ann = {"X-Label-Invite": store.invite("ann")}
    for path in ("/", "/api/next?labeller=ann", "/api/progress", "/clips/a.gif", "/static/app.js"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"X-Label-Token": "wrong"}).status_code == 403, path
        assert client.get(path, headers={"X-Label-Invite": "wrong"}).status_code == 403, path
        assert client.get(path, headers=ann).status_code == 200, path
        # the shared token opens everything but labelling: on a public bind only invited people label
        assert client.get(path, headers={"X-Label-Token": TOKEN}).status_code == (
            403 if path.startswith("/api/next") else 200), path
    assert client.get("/api/progress", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/progress", headers={"Authorization": "Bearer x"}).status_code == 403
    assert client.get("/?token=wrong").status_code == 403
    assert client.get("/", headers={"X-Label-Token": TOKEN + "x"}).status_code == 403
    assert client.get("/", headers={"X-Label-Token": "é"}).status_code == 403  # non-ASCII: no crash
    assert post_label(client, GOOD).status_code == 401
    assert post_label(client, GOOD, headers={"X-Label-Token": "wrong"}).status_code == 403
    assert post_label(client, GOOD, headers={"X-Label-Token": TOKEN}).status_code == 403  # a name, not a person
    assert n_labels(run_dir) == 0
    assert post_label(client, GOOD, headers=ann).status_code == 200


def test_token_query_sets_a_cookie_once(run_dir):
    client = create_app(run_dir, host="0.0.0.0", token=TOKEN).test_client()
    first = client.get(f"/?token={TOKEN}")
    assert first.status_code == 302 and first.headers["Location"].endswith("/") and "token" not in first.headers[
        "Location"]
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/api/progress").status_code == 200  # the cookie now authenticates
    assert client.get("/api/next?labeller=ann").status_code == 403  # ...but a public server needs an invitation
    client.set_cookie("rlhf_label_token", "wrong")
    assert client.get("/api/progress").status_code == 403


def test_loopback_server_rejects_foreign_host_headers(run_dir):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 must not reach the app."""
    client = create_app(run_dir).test_client()
    assert client.get("/api/progress", headers={"Host": "evil.example:8765"}).status_code == 403
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765", "localhost"):
        assert client.get("/api/progress", headers={"Host": host}).status_code == 200, host


# -- real server processes -------------------------------------------------------------------------------------------
class ServerProcess:
    """``rlhf-gym label --run DIR --port 0`` as a child process; ``url`` is read from its first stdout line."""

    def __init__(self, run_dir: Path, *extra: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "label", "--run", str(run_dir),
                                      "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=OUTER_TIMEOUT_S)  # its first line (importing torch is slow on a busy 2-core machine)
        if not line or "http://" not in line[0]:
            self.kill()
            raise RuntimeError(f"label server did not start: {line}")
        url = line[0].split("http://", 1)[1].strip().rstrip("/")
        self.host, self.port = url.rsplit(":", 1)[0], int(url.rsplit(":", 1)[1])

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=OUTER_TIMEOUT_S)


def request(conn: http.client.HTTPConnection, method: str, path: str, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


def choice_for(pair_id: str) -> str:
    return ("left", "right", "equal", "skip")[int(pair_id.rsplit("-", 1)[1]) % 4]


def test_load_20_labellers_500_labels_none_lost_none_duplicated(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text(f"p{i}", "a", "b", pair_id=f"q-{i}") for i in range(500)])
    server = ServerProcess(run)
    acked: list[tuple[str, str, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def labeller(name: str):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=OUTER_TIMEOUT_S)
        try:
            while True:
                status, body = request(conn, "GET", f"/api/next?labeller={name}")
                assert status == 200, body
                if body["pair"] is None:
                    return
                pid = body["pair"]["pair_id"]
                status, reply = request(conn, "POST", "/api/label",
                                        {"pair_id": pid, "label": choice_for(pid), "labeller": name})
                with lock:
                    if status == 200:
                        acked.append((pid, choice_for(pid), name))
                    else:
                        failures.append(f"{name} {pid}: {status} {reply}")
        except Exception as exc:  # reported by the assertion below
            with lock:
                failures.append(f"{name}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=labeller, args=(f"user{i}",), daemon=True) for i in range(20)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=OUTER_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads), "labellers did not finish"
    finally:
        server.kill(signal.SIGTERM)
    assert not failures, failures[:5]
    assert len(acked) == 500 and len({a[0] for a in acked}) == 500
    assert len({a[2] for a in acked}) > 1  # the work really was shared
    with LabelStore(store_path(run)) as store:
        stored = [(r["pair_id"], r["choice"], r["labeller"]) for r in store.rows()]
    assert sorted(stored) == sorted(acked)  # exactly the acknowledged labels: none lost, none duplicated


def test_kill_9_loses_no_acknowledged_label_and_the_loop_resumes(tmp_path):
    run = tmp_path / "run"
    n = 60
    human = HumanLabeller(run, timeout=OUTER_TIMEOUT_S, poll_s=0.05, progress=False)
    ids = human.enqueue_texts([f"p{i}" for i in range(n)], ["a"] * n, ["b"] * n,
                              pair_ids=[f"c-{i}" for i in range(n)])
    result: dict = {}
    loop = threading.Thread(target=lambda: result.update(labels=human.wait(ids)), daemon=True)
    loop.start()  # the training loop, blocked waiting for people

    server = {"proc": ServerProcess(run)}
    acked: dict[str, str] = {}
    maybe: dict[str, str] = {}  # sent when the server died: stored or not, never acknowledged
    lock = threading.Lock()
    stop = time.monotonic() + OUTER_TIMEOUT_S  # only the bound of a broken test

    def labeller(name: str):
        pending = None
        while time.monotonic() < stop:
            srv = server["proc"]
            try:
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=OUTER_TIMEOUT_S)
                if pending is None:
                    status, body = request(conn, "GET", f"/api/next?labeller={name}")
                    if body["pair"] is None:
                        if len(acked) + len(maybe) >= n:
                            return
                        time.sleep(0.05)
                        continue
                    pending = body["pair"]["pair_id"]
                status, _ = request(conn, "POST", "/api/label",
                                    {"pair_id": pending, "label": choice_for(pending), "labeller": name})
                with lock:
                    if status == 200:
                        acked[pending] = choice_for(pending)
                    elif status == 409:  # stored before the crash, acknowledgement lost with the server
                        maybe[pending] = choice_for(pending)
                pending = None
                conn.close()
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)  # server down: keep the label and retry against the restarted server

    clients = [threading.Thread(target=labeller, args=(f"person{i}",), daemon=True) for i in range(4)]
    for t in clients:
        t.start()
    while len(acked) < 20 and time.monotonic() < stop:
        time.sleep(0.005)
    server["proc"].kill(signal.SIGKILL)  # mid-way, with requests in flight
    with lock:
        acked_at_crash = dict(acked)
    assert 20 <= len(acked_at_crash) < n
    with LabelStore(store_path(run)) as store:
        stored = {r["pair_id"]: r["choice"] for r in store.rows()}
    assert {k: stored.get(k) for k in acked_at_crash} == acked_at_crash  # every acknowledged label is on disk

    server["proc"] = ServerProcess(run)  # restart on the same store; the clients carry on
    try:
        for t in clients:
            t.join(timeout=OUTER_TIMEOUT_S)
        loop.join(timeout=OUTER_TIMEOUT_S)
    finally:
        server["proc"].kill(signal.SIGTERM)
    assert "labels" in result, "the waiting labeller did not complete"
    expected = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": np.nan}
    np.testing.assert_array_equal(result["labels"], [expected[choice_for(i)] for i in ids])
    assert set(acked) | set(maybe) == set(ids)


def test_cli_exports_text_labels(run_dir, tmp_path):
    from agents.cli import main

    with LabelStore(store_path(run_dir)) as store:
        store.submit("txt-0", "right", "ann")
    out = tmp_path / "pairs.jsonl"
    assert main(["label", "--run", str(run_dir), "--export-text", str(out)]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"prompt": "Say hi", "response_a": "hi", "response_b": "<b>hello</b>", "label": 0.0}]
