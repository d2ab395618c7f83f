"""Connection limits of the labelling server: per-client caps and a deadline for each whole request (issue 25).

The attack they answer (slowloris): one client opens more sockets than the server's connection limit and keeps each
one alive by sending a header line every few seconds. waitress's limits are global (``connection_limit``) and its
timeout only counts silence (``channel_timeout``), so those sockets were never closed, the server stopped accepting,
and valid requests waited in the kernel's backlog until they timed out.

Design: two small subclasses of waitress's own classes, no change to how it parses, queues or answers requests.

- ``GuardedServer.handle_accept`` counts open connections per client (``auth.client_key``: the address, an IPv6
  address's /64). A client at ``per_client`` open connections has further ones answered ``503`` and closed at once,
  before a channel exists: it costs the server one accept and one send (the socket lingers, half-closed, until the
  next sweep so the client reads the answer), and never a slot of the global limit. The
  accept loop takes up to ``_ACCEPTS_PER_EVENT`` connections per wake-up (waitress takes one), so a client that
  reconnects as fast as it is refused does not make the event loop spin once per socket.
- Connections from a ``--trusted-proxy`` carry many people: they are not capped per connection. Each request they
  bring counts, while it is queued or served, against the client ``X-Forwarded-For`` names (``GuardedServer.add_task``);
  past ``per_client`` such requests, waitress's own error task answers ``503`` and closes the connection.
- ``_Channel`` notes when the first byte of each request arrived; ``GuardedServer.maintenance`` (waitress's periodic
  sweep) closes a connection whose request has not fully arrived, headers and body, ``request_timeout`` seconds
  later, however steadily it trickles in. Silence is still ``channel_timeout``'s business.

Why not a thread per connection with socket timeouts (werkzeug), or a reverse proxy in front: the first is what this
server replaced (one thread per half-open socket); the second is the right answer on the open internet (nginx
buffers whole requests and has ``limit_conn``), and ``--trusted-proxy`` makes the limits count the people behind it,
but a lone ``rlhf-gym label`` must survive on its own too.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.utilities import Error

from rewardmodels.feedback.webapp.auth import TrustedProxies, client_key

logger = logging.getLogger(__name__)

#: Connections accepted per wake-up of the event loop (nginx's multi_accept, bounded so one burst cannot hog it).
_ACCEPTS_PER_EVENT = 256
#: Refused sockets kept half-closed until the next sweep (at least this long), so their 503 is read, not reset; at
#: most this many (under a flood the oldest is closed at once: a file descriptor each).
_LINGER_S, LINGER_MAX = 1.0, 256
_BUSY_BODY = b"too many connections from your address; close some and try again\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 10\r\n"
         b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class _TooManyRequests(Error):
    """waitress's error answer for a proxied client over its cap (served by waitress's ErrorTask, which closes)."""

    code = 503
    reason = "Service Unavailable"

    def to_response(self, ident=None):
        status, headers, body = super().to_response(ident)
        return status, [*headers, ("Retry-After", "10")], body


class _Channel(HTTPChannel):
    """waitress's connection, plus the client it counts against and when its current request began."""

    def __init__(self, server, sock, addr, adj, map=None, client: str | None = None):
        self.client = client  # set before the channel joins the loop: del_channel gives it back
        self.request_started: float | None = None
        self._timed = None
        super().__init__(server, sock, addr, adj, map=map)

    def received(self, data):
        done = super().received(data)
        request = self.request  # the request still arriving, if any (complete ones have moved to self.requests)
        if request is None:
            self.request_started = None
        elif request is not self._timed:
            self._timed, self.request_started = request, time.monotonic()
        return done

    def service(self):
        request = self.requests[0] if self.requests else None
        try:
            super().service()
        finally:
            key = getattr(request, "counted_as", None)
            if key is not None:
                request.counted_as = None
                self.server.give_back(key)

    def del_channel(self, map=None):
        super().del_channel(map)
        if self.client is not None:
            client, self.client = self.client, None
            self.server.give_back(client)


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with the per-client caps and the request deadline of the module docstring."""

    channel_class = _Channel

    def __init__(self, application, map, *, dispatcher, adj, sockinfo, per_client: int, request_timeout: float,
                 proxies: TrustedProxies):
        self.per_client, self.request_timeout, self.proxies = per_client, float(request_timeout), proxies
        self.clients: Counter[str] = Counter()  # open direct connections, or proxied requests in flight
        self.refused = self.timed_out = 0
        self._count_lock = threading.Lock()  # accept runs in the event loop; proxied requests end in workers
        self._refusals_logged_at = 0.0
        self._lingering: deque[tuple[float, socket.socket]] = deque()  # refused, half-closed, closed at the sweep
        super().__init__(application, map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)

    def take(self, client: str) -> bool:
        with self._count_lock:
            if self.clients[client] >= self.per_client:
                return False
            self.clients[client] += 1
            return True

    def give_back(self, client: str) -> None:
        with self._count_lock:
            self.clients[client] -= 1
            if self.clients[client] <= 0:
                del self.clients[client]

    def handle_accept(self):
        for _ in range(_ACCEPTS_PER_EVENT):
            if len(self._map) >= self.adj.connection_limit:
                return  # readable() stops accepting until connections close
            try:
                pair = self.accept()
                if pair is None:
                    return  # nothing more waiting
                conn, addr = pair
                self.set_socket_options(conn)
            except OSError:  # out of file descriptors, or a connection reset before we got to it
                logger.debug("accept failed", exc_info=True)
                return
            self._admit(conn, addr)

    def _admit(self, conn, addr) -> None:
        peer = addr[0]
        client = None if self.proxies.trusts(peer) else client_key(peer)
        if client is not None and not self.take(client):
            self._refuse(conn, client)
            return
        try:
            self.channel_class(self, conn, addr, self.adj, map=self._map, client=client)
        except OSError:
            if client is not None:
                self.give_back(client)
            conn.close()

    def _refuse(self, conn, client: str) -> None:
        self.refused += 1
        try:
            conn.setblocking(False)
            conn.send(_BUSY)  # a fresh socket's send buffer always has room for it
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
        else:  # closed now, with the request unread, the kernel would reset it and the 503 could be lost
            if len(self._lingering) >= LINGER_MAX:  # a flood: the oldest goes now, reset or not
                self._lingering.popleft()[1].close()
            self._lingering.append((time.monotonic() + _LINGER_S, conn))
        now = time.monotonic()
        if now - self._refusals_logged_at >= 60:  # one line a minute, not one per socket of a flood
            self._refusals_logged_at = now
            logger.warning("label server: refusing connections from %s, which holds %d already "
                           "(--max-connections-per-client); %d refused so far", client, self.per_client, self.refused)

    def add_task(self, channel):
        request = channel.requests[0] if channel.requests else None
        if channel.client is None and request is not None and not request.error:  # from a trusted proxy
            client = self.proxies.client(channel.addr[0], request.headers.get("X_FORWARDED_FOR"))
            if self.take(client):
                request.counted_as = client
            else:
                self.refused += 1
                request.error = _TooManyRequests(f"too many requests from {client} at once; try again shortly")
        super().add_task(channel)

    def close(self):
        while self._lingering:
            self._lingering.popleft()[1].close()
        super().close()

    def maintenance(self, now):
        super().maintenance(now)  # closes connections silent for channel_timeout
        while self._lingering and self._lingering[0][0] <= time.monotonic():
            self._lingering.popleft()[1].close()
        cutoff = time.monotonic() - self.request_timeout
        for channel in self.active_channels.values():
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests and not channel.will_close:
                channel.will_close = True  # the loop closes it at its next turn
                self.timed_out += 1
