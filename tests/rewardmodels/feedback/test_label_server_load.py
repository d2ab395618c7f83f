"""The server under load, small and fast (the full run is benchmarks/label_server_load.py): idle and half-open
connections cost no thread and are closed after the idle timeout; concurrent labellers lose nothing meanwhile."""

import threading

import pytest

from benchmarks.label_server_load import closed_by_server, make_run, open_idle, run_load
from rewardmodels.feedback.label_store import LabelStore, store_path
from rewardmodels.feedback.webapp import ServerThread, create_app
from tests.waiting import OUTER_TIMEOUT_S, wait_until


def server_threads() -> int:
    return sum(1 for t in threading.enumerate() if not t.name.startswith("labeller-"))


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

    for bad in ({"threads": 0}, {"connection_limit": 0}, {"channel_timeout": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            start_server(Flask(__name__), **bad)
