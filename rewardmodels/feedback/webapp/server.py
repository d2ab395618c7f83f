"""Serving the labelling app with waitress, a production WSGI server in pure Python.

Why waitress: one event loop (poll(), so thousands of sockets) owns every connection, and a FIXED pool of worker
threads runs the app. An idle or half-open connection costs a file descriptor, never a thread, and is closed after
``channel_timeout`` seconds without traffic; past ``connection_limit`` open connections the server stops accepting
(new ones wait in the kernel's backlog) instead of failing. werkzeug's development server, used before, spent one
thread per connection and never timed them out: 1,500 half-open sockets held 1,478 threads.

The label store (SQLite, WAL, BEGIN IMMEDIATE) serialises writes; its per-thread connections are bounded by the
pool. ``benchmarks/label_server_load.py`` measures latency under load (results in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from waitress.server import create_server

from rewardmodels.feedback.webapp.auth import check_bind

logger = logging.getLogger(__name__)

#: File descriptors kept free for the listening socket, SQLite files and clip files being sent.
_SPARE_FDS = 64


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (never above the hard limit); return it."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return wanted if soft == resource.RLIM_INFINITY else soft


class LabelServer:
    """A bound waitress server with the socketserver-style interface the CLI and tests use.

    ``server_port`` is the bound port; ``serve_forever()`` runs until ``shutdown()`` (from another thread, or a
    signal handler raising KeyboardInterrupt); ``server_close()`` closes every connection and stops the workers.
    """

    def __init__(self, app: Flask, host: str, port: int, *, threads: int, connection_limit: int,
                 channel_timeout: int, max_body: int):
        self.host = "127.0.0.1" if host == "localhost" else host  # one socket: ::1 and 127.0.0.1 would get 2 ports
        self._map: dict = {}
        self._wsgi = create_server(
            app, map=self._map, host=self.host, port=port, threads=threads, connection_limit=connection_limit,
            channel_timeout=channel_timeout, cleanup_interval=max(1, min(10, channel_timeout // 2)),
            asyncore_use_poll=True,  # select() cannot watch file descriptors above 1023
            backlog=2048, max_request_body_size=max_body, max_request_header_size=64 * 1024,
            expose_tracebacks=False, ident="rlhf-gym")
        self.server_port = int(self._wsgi.effective_port)
        self.threads = threads
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        from waitress import wasyncore

        self._stopped.clear()
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=poll_interval, use_poll=True, map=self._map, count=1)
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop ``serve_forever`` (called from another thread) and wait for it to return."""
        self._stop.set()
        self._wsgi.pull_trigger()  # wake the event loop now rather than at its next poll timeout
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        from waitress import wasyncore

        wasyncore.close_all(self._map, ignore_all=True)
        self._wsgi.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def worker_threads(self) -> int:
        """Worker threads alive now (the pool size while serving)."""
        return len(self._wsgi.task_dispatcher.threads)

    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._wsgi.active_channels)


def start_server(app: Flask, host: str = "127.0.0.1", port: int = 0, token: str | None = None, *,
                 threads: int = 8, connection_limit: int = 2000, channel_timeout: int = 30,
                 max_body: int = 1024 * 1024) -> LabelServer:
    """Bind (port 0 = any free port) and return the server; call ``serve_forever()`` / ``shutdown()`` on it.

    Args:
        threads: worker threads running requests (the only threads requests ever use).
        connection_limit: open connections accepted at once; more wait in the backlog. Lowered, with a warning, to
            what the process's open-file limit allows (raised towards it first).
        channel_timeout: seconds a connection may sit without traffic (idle keep-alive, or a request that stopped
            half-way) before it is closed.
        max_body: request bodies above this many bytes are refused by the server itself (the app's own limit is
            smaller; this one keeps a slow upload from filling memory).

    Refuses a non-loopback host without a (long enough) token before binding.
    """
    check_bind(host, token)
    if threads < 1 or connection_limit < 1 or channel_timeout < 1:
        raise ValueError(f"threads, connection_limit and channel_timeout must be >= 1, got {threads}, "
                         f"{connection_limit}, {channel_timeout}")
    allowed = raise_fd_limit(connection_limit + _SPARE_FDS) - _SPARE_FDS
    if allowed < connection_limit:
        logger.warning("the open-file limit allows %d connections, not %d; raise it (ulimit -n) to hold more",
                       allowed, connection_limit)
        connection_limit = max(1, allowed)
    return LabelServer(app, host, port, threads=threads, connection_limit=connection_limit,
                       channel_timeout=channel_timeout, max_body=max_body)


def server_url(server: LabelServer) -> str:
    host = server.host if ":" not in server.host else f"[{server.host}]"
    return f"http://{host}:{server.server_port}/"


class ServerThread:
    """Run the app in a background thread (tests, notebooks): ``with ServerThread(app) as url: ...``.

    Keyword arguments go to :func:`start_server`; ``.server`` is the :class:`LabelServer`.
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **kwargs):
        self.server = start_server(app, host, port, token, **kwargs)
        self.url = server_url(self.server)
        self._thread = threading.Thread(target=self.server.serve_forever, name="label-server", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
