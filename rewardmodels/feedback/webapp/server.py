"""Serving the labelling app: werkzeug's threaded WSGI server (stdlib sockets, one thread per connection).

Labelling traffic is a few requests per person per second; the threaded server handles the 20-labeller load test
without loss, and the label store (SQLite, WAL, BEGIN IMMEDIATE) serialises the writes. Behind a reverse proxy or
with many more labellers, serve ``create_app(...)`` with any production WSGI server instead.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from rewardmodels.feedback.webapp.app import check_bind

logger = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not stderr (the load test makes thousands)."""

    def log_request(self, code="-", size="-"):
        logger.debug("%s %s %s", self.command, self.path.split("?", 1)[0], code)


def start_server(app: Flask, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> BaseWSGIServer:
    """Bind (port 0 = any free port) and return the server; call ``serve_forever()`` / ``shutdown()`` on it.

    ``server.server_port`` is the bound port. Refuses a non-loopback host without a token before binding.
    """
    check_bind(host, token)
    return make_server(host, port, app, threaded=True, request_handler=_QuietHandler)


def server_url(server: BaseWSGIServer) -> str:
    host = server.host if ":" not in server.host else f"[{server.host}]"
    return f"http://{host}:{server.server_port}/"


class ServerThread:
    """Run the app in a background thread (tests, notebooks): ``with ServerThread(app) as url: ...``."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.server = start_server(app, host, port, token)
        self.url = server_url(self.server)
        self._thread = threading.Thread(target=self.server.serve_forever, name="label-server", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
