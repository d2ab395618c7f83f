"""The server under load, small and fast (the full run is benchmarks/label_server_load.py): idle and half-open
connections cost no thread and are closed after the idle timeout; concurrent labellers lose nothing meanwhile; one
client (slowloris) cannot starve the others: per-client caps, a deadline for whole requests, trusted proxies."""

import socket
import threading
import time

import pytest

from benchmarks.label_server_load import Slowloris, closed_by_server, make_run, open_idle, run_load
from rewardmodels.feedback.label_store import LabelStore, store_path
from rewardmodels.feedback.webapp import ServerThread, create_app
from tests.waiting import OUTER_TIMEOUT_S, wait_until


def server_threads() -> int:
    """Threads other than the clients' (and the label store's one checkpoint retry, which no connection adds to)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith(("labeller-", "label-store-checkpoint")))


def test_200_idle_sockets_and_20_labellers_with_a_bounded_thread_pool(tmp_path):
    run = make_run(tmp_path / "run", 200)
    idle_timeout = 3
    server = ServerThread(create_app(run), threads=4, channel_timeout=idle_timeout)
    with server as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        before = server_threads()
        idle = open_idle(port, 200)  # 100 silent, 100 stopped in the middle of their headers
        wait_until(lambda: server.server.open_connections() == 200, "the server holding the 200 idle sockets")
        assert server_threads() == before  # werkzeug's server started one thread per connection here
        stats = run_load(port, 20, probe=server_threads, timeout_s=OUTER_TIMEOUT_S)
        assert stats["finished"] and not stats["failures"], stats["failures"][:3]
        assert stats["peak_threads"] <= before and server.server.worker_threads() == 4
        # the idle timeout closes what sends nothing, so the server is not held open by them for ever
        assert closed_by_server(idle, wait_s=OUTER_TIMEOUT_S) == len(idle)  # returns when they are all closed
        for s in idle:
            s.close()
    assert len(stats["acked"]) == 200 and len({a[0] for a in stats["acked"]}) == 200
    with LabelStore(store_path(run)) as store:
        stored = sorted((r["pair_id"], r["choice"], r["labeller"]) for r in store.rows())
    assert stored == sorted(stats["acked"])  # none lost, none duplicated
    assert len({a[2] for a in stats["acked"]}) > 1  # the work really was shared


def test_server_settings_are_checked():
    from flask import Flask

    from rewardmodels.feedback.webapp import start_server

    for bad in ({"threads": 0}, {"connection_limit": 0}, {"channel_timeout": 0}, {"per_client": 0},
                {"request_timeout": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            start_server(Flask(__name__), **bad)


# -- one client cannot take the server (issue 25) ---------------------------------------------------------------------
def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


def _reply(sock: socket.socket, timeout: float = 60) -> bytes:
    sock.settimeout(timeout)
    try:
        return b"".join(iter(lambda: sock.recv(65536), b""))
    except ConnectionResetError:
        return b""
    finally:
        sock.close()


def _get(port: int, path: str, headers: str = "", address: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(address, 0))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n".encode())
    return sock


def test_slowloris_from_one_client_cannot_starve_valid_requests(tmp_path):
    """The attack of issue 25, small: one client holds 150 sockets (more than the server's 100) with a header line
    on each every 0.5 s. Before, the server stopped accepting and valid requests waited until they timed out."""
    run = make_run(tmp_path / "run", 60)
    server = ServerThread(create_app(run), threads=4, connection_limit=100, per_client=20, channel_timeout=120,
                          request_timeout=120)
    with server as url:
        attacker, stop = Slowloris(_port(url), 150, interval_s=0.5), threading.Event()
        thread = threading.Thread(target=attacker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert attacker.first_pass.wait(120)
            stats = run_load(_port(url), 10, timeout_s=300)  # ten people, each from their own address
            assert attacker.held <= 20 and server.server.refused_connections() >= 130
        finally:
            stop.set()
            thread.join(timeout=60)
    assert stats["finished"] and not stats["failures"], stats["failures"][:3]
    with LabelStore(store_path(run)) as store:
        assert sorted((r["pair_id"], r["choice"], r["labeller"]) for r in store.rows()) == sorted(stats["acked"])
    assert len(stats["acked"]) == 60


def test_a_client_at_its_cap_is_answered_503_until_it_closes_one(tmp_path):
    server = ServerThread(create_app(make_run(tmp_path / "run", 1)), per_client=3)
    with server as url:
        held = [socket.create_connection(("127.0.0.1", _port(url)), timeout=60) for _ in range(3)]
        over = _reply(_get(_port(url), "/api/progress"))
        assert over.startswith(b"HTTP/1.1 503") and b"too many connections" in over
        assert _reply(_get(_port(url), "/api/progress", address="127.0.0.2")).startswith(b"HTTP/1.1 200")
        held.pop().close()
        deadline = time.monotonic() + 60  # the server notices the close at its next turn; wait for it
        while (reply := _reply(_get(_port(url), "/api/progress"))).startswith(b"HTTP/1.1 503"):
            assert time.monotonic() < deadline
        assert reply.startswith(b"HTTP/1.1 200")
        for s in held:
            s.close()


def test_a_request_that_trickles_in_is_closed_at_its_deadline(tmp_path):
    """One header line every 0.2 s kept a connection open for ever: the idle timeout counts only silence."""
    server = ServerThread(create_app(make_run(tmp_path / "run", 1)), request_timeout=2, channel_timeout=300)
    with server as url:
        sock = socket.create_connection(("127.0.0.1", _port(url)), timeout=60)
        sock.sendall(b"GET /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.2)
        closed, deadline = False, time.monotonic() + 120
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                closed = sock.recv(4096) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
        sock.close()
        assert closed and server.server.timed_out_requests() == 1
        assert _reply(_get(_port(url), "/api/progress")).startswith(b"HTTP/1.1 200")  # a whole request is served


def test_behind_a_trusted_proxy_requests_count_against_the_forwarded_client():
    from flask import Flask

    app, gate, entered = Flask(__name__), threading.Event(), threading.Semaphore(0)

    @app.get("/slow")
    def slow():
        entered.release()
        gate.wait(120)
        return "slow"

    @app.get("/fast")
    def fast():
        return "fast"

    server = ServerThread(app, threads=4, per_client=2, trusted_proxies=("127.0.0.1",))
    with server as url:
        port, attacker = _port(url), "X-Forwarded-For: 203.0.113.9\r\n"
        held = [_get(port, "/slow", attacker) for _ in range(2)]
        for _ in held:
            assert entered.acquire(timeout=60)  # both in flight
        assert _reply(_get(port, "/slow", attacker)).startswith(b"HTTP/1.1 503")  # a third from the same client
        assert _reply(_get(port, "/fast", "X-Forwarded-For: 198.51.100.7\r\n")).startswith(b"HTTP/1.1 200")
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]  # the proxy's own:
        assert _reply(_get(port, "/fast", "X-Forwarded-For: 198.51.100.8\r\n")).startswith(b"HTTP/1.1 200")
        gate.set()
        assert all(_reply(s).startswith(b"HTTP/1.1 200") for s in held)
        assert _reply(_get(port, "/fast", attacker)).startswith(b"HTTP/1.1 200")  # its count was given back
        for s in idle:
            s.close()
