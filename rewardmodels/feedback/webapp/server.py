"""Serving the labelling app with waitress, a production WSGI server in pure Python.

Why waitress: one event loop (poll(), so thousands of sockets) owns every connection, and a FIXED pool of worker
threads runs the app. An idle or half-open connection costs a file descriptor, never a thread, and is closed after
``channel_timeout`` seconds without traffic; past ``connection_limit`` open connections the server stops accepting
(new ones wait in the kernel's backlog) instead of failing. werkzeug's development server, used before, spent one
thread per connection and never timed them out: 1,500 half-open sockets held 1,478 threads.

On top of waitress (``connections.py``): at most ``per_client`` connections per client (more are answered 503 at
once), and ``request_timeout`` seconds for a request to arrive whole, so one client trickling header lines into
thousands of sockets (slowloris) can neither fill the connection limit nor hold sockets for ever.

The label store (SQLite, WAL, BEGIN IMMEDIATE) serialises writes; its per-thread connections are bounded by the
pool. ``benchmarks/label_server_load.py`` measures latency under load (results in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from rewardmodels.feedback.webapp.auth import TrustedProxies, check_bind
from rewardmodels.feedback.webapp.connections import LINGER_MAX, GuardedServer

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
                 channel_timeout: int, max_body: int, per_client: int, request_timeout: int,
                 trusted_proxies: TrustedProxies):
        self.host = "127.0.0.1" if host == "localhost" else host  # one socket: ::1 and 127.0.0.1 would get 2 ports
        self._map: dict = {}
        sweep_s = max(1, min(10, channel_timeout // 2, request_timeout // 2))  # how often timeouts are enforced
        adj = Adjustments(
            host=self.host, port=port, threads=threads, connection_limit=connection_limit,
            channel_timeout=channel_timeout, cleanup_interval=sweep_s,
            asyncore_use_poll=True,  # select() cannot watch file descriptors above 1023
            backlog=2048, max_request_body_size=max_body, max_request_header_size=64 * 1024,
            expose_tracebacks=False, ident="rlhf-gym")
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        # what waitress.create_server does for one listening socket, with its server class swapped for ours
        self._wsgi = GuardedServer(app, self._map, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0],
                                   per_client=per_client, request_timeout=request_timeout, proxies=trusted_proxies)
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

    def refused_connections(self) -> int:
        """Connections (or proxied requests) answered 503 because their client was at its cap, so far."""
        return self._wsgi.refused

    def timed_out_requests(self) -> int:
        """Connections closed because their request had not arrived whole within ``request_timeout``, so far."""
        return self._wsgi.timed_out


def start_server(app: Flask, host: str = "127.0.0.1", port: int = 0, token: str | None = None, *,
                 threads: int = 8, connection_limit: int = 2000, channel_timeout: int = 30,
                 max_body: int = 1024 * 1024, per_client: int = 64, request_timeout: int = 30,
                 trusted_proxies: tuple[str, ...] | list[str] = ()) -> LabelServer:
    """Bind (port 0 = any free port) and return the server; call ``serve_forever()`` / ``shutdown()`` on it.

    Args:
        threads: worker threads running requests (the only threads requests ever use).
        connection_limit: open connections accepted at once; more wait in the backlog. Lowered, with a warning, to
            what the process's open-file limit allows (raised towards it first).
        channel_timeout: seconds a connection may sit without traffic (idle keep-alive, or a request that stopped
            half-way) before it is closed.
        max_body: request bodies above this many bytes are refused by the server itself (the app's own limit is
            smaller; this one keeps a slow upload from filling memory).
        per_client: connections one client may hold open (a browser uses a handful; people behind one NAT share
            an address); behind ``trusted_proxies``, requests one forwarded client may have in flight.
        request_timeout: seconds from a request's first byte until all of it (headers and body) must have arrived.
        trusted_proxies: addresses or networks of reverse proxies whose X-Forwarded-For names the client.

    Refuses a non-loopback host without a (long enough) token before binding.
    """
    check_bind(host, token)
    limits = {"threads": threads, "connection_limit": connection_limit, "channel_timeout": channel_timeout,
              "per_client": per_client, "request_timeout": request_timeout}
    if min(limits.values()) < 1:
        raise ValueError(f"{', '.join(limits)} must be >= 1, got {', '.join(map(str, limits.values()))}")
    spare = _SPARE_FDS + LINGER_MAX  # and the refused sockets that linger until the next sweep
    allowed = raise_fd_limit(connection_limit + spare) - spare
    if allowed < connection_limit:
        logger.warning("the open-file limit allows %d connections, not %d; raise it (ulimit -n) to hold more",
                       allowed, connection_limit)
        connection_limit = max(1, allowed)
    return LabelServer(app, host, port, threads=threads, connection_limit=connection_limit,
                       channel_timeout=channel_timeout, max_body=max_body, per_client=per_client,
                       request_timeout=request_timeout, trusted_proxies=TrustedProxies(trusted_proxies))


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
