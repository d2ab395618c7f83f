"""Who may talk to the labelling server: bind rules, tokens, invitations, origins, and a brake on token guessing.

Two kinds of credential (either one lets a request in when the server has a token):
- the shared access token (``--token-file`` / ``$RLHF_GYM_LABEL_TOKEN``): the operator's key. It opens the page and
  the progress API; on a loopback bind its holder labels under a self-declared name.
- a personal invitation (``rlhf-gym label --invite NAME``): a per-person token stored hashed in the label store. Its
  holder labels as NAME and nobody else; this is the only way to label on a server reachable from other machines.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections import deque
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

#: Shortest shared token accepted on a non-loopback bind: 16 characters of ``secrets.token_urlsafe`` carry 96 bits.
MIN_TOKEN_LENGTH = 16


class InsecureBindError(ValueError):
    """Serving on a non-loopback interface without an access token, or with one too short to resist guessing."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'localhost' -> 'localhost'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0]


def check_token(token: str | None) -> None:
    """Raise ValueError unless ``token`` is None or printable ASCII without spaces (it travels in headers)."""
    if token is not None and (not token or not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError("the access token must be non-empty printable ASCII without spaces; make one with "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`")


def check_bind(host: str, token: str | None) -> None:
    """Raise InsecureBindError unless ``host`` is loopback, or a token of at least MIN_TOKEN_LENGTH is set."""
    if is_loopback(host):
        return
    make = "python -c 'import secrets; print(secrets.token_urlsafe(24))' > token.txt"
    if not token:
        raise InsecureBindError(
            f"refusing to serve on {host!r} (reachable from other machines) without an access token; make one "
            f"(`{make}`) and pass --token-file token.txt (or set $RLHF_GYM_LABEL_TOKEN), or bind 127.0.0.1")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InsecureBindError(
            f"the access token has {len(token)} characters; on {host!r} (reachable from other machines) it needs at "
            f"least {MIN_TOKEN_LENGTH} so it cannot be guessed: make one with `{make}`")


def same_token(presented: str | None, token: bytes) -> bool:
    """Constant-time comparison (hmac.compare_digest), safe for any presented string."""
    return presented is not None and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), token)


def origin_of(url: str) -> str | None:
    """'http://Host:80/path?q' -> 'http://host:80'; None for 'null' or anything that is not an http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}"


def write_origin_ok(origin: str | None, referer: str | None, own: str, allowed: frozenset[str]) -> bool:
    """May a write with these ``Origin`` / ``Referer`` headers reach the API?

    Browsers send ``Origin`` on every POST (and ``Sec-Fetch-Site``, checked elsewhere, on most); an old browser may
    send only ``Referer``. Either one naming another site refuses the write; a request with neither comes from a
    script (curl, the tests), which is not a browser that a hostile page could drive, and still needs credentials.
    """
    own_and_allowed = allowed | {own.lower()}
    if origin is not None:
        return origin_of(origin) in own_and_allowed
    if referer:
        return origin_of(referer) in own_and_allowed
    return True


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy or a socket writes it ('203.0.113.9', '203.0.113.9:443', '[2001:db8::1]:443'), with
    IPv4-mapped IPv6 as IPv4; None if it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def client_key(addr: str) -> str:
    """Who a request counts as, for connection caps and the failed-token limit: an IPv4 address, or an IPv6 address's
    /64 (one subscriber's block: someone holding it has 2**64 addresses to rotate through)."""
    ip = _ip(addr)
    if ip is None:
        return addr
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class TrustedProxies:
    """The reverse proxies whose ``X-Forwarded-For`` header names the client (``rlhf-gym label --trusted-proxy``).

    None by default, and then the header is ignored: any client can send it. Behind a proxy, every connection comes
    from the proxy's address, so without this list all the people it serves would count as one client.
    """

    def __init__(self, entries: tuple[str, ...] | list[str] = ()):
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError:
                raise ValueError(f"trusted proxy {entry!r} is not an IP address or network, such as 10.0.0.5 or "
                                 f"10.0.0.0/8") from None
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, addr: str) -> bool:
        ip = _ip(addr)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client key (:func:`client_key`) of a request from ``peer`` with this ``X-Forwarded-For``: the peer,
        unless it is a trusted proxy; then the nearest hop (from the right) that is not one. Hops left of it were
        written by the client and are never believed; a malformed hop ends the walk at the last good one."""
        addr = peer
        if forwarded_for and self.trusts(peer):
            for hop in reversed(forwarded_for.split(",")):
                if _ip(hop) is None:
                    break
                addr = hop.strip()
                if not self.trusts(addr):
                    break
        return client_key(addr)


class FailureLimiter:
    """Counts failed credential attempts per client (:meth:`TrustedProxies.client`); ``blocked(client)`` once
    ``max_failures`` fall within ``window_s`` seconds, for as long as they keep coming that fast. Failures are logged
    (never the token) until the client is blocked; after that only the count grows.

    A block refuses the client's further FAILURES (429 instead of 403), never a valid credential: behind a proxy or a
    NAT, people share one address, and one person's typos (or someone's guessing) must not lock the others out. So the
    limit is a tripwire in the log and a brake on log floods; what stops guessing is the credentials' size
    (invitations carry 192 random bits; a non-loopback bind needs a token of ``MIN_TOKEN_LENGTH`` characters).

    Bounded memory: at most ``max_clients`` clients are tracked; the stalest is forgotten first.
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, max_clients: int = 10_000):
        if max_failures < 1 or window_s <= 0:
            raise ValueError(f"max_failures must be >= 1 and window_s > 0, got {max_failures}, {window_s}")
        self.max_failures, self.window_s, self.max_clients = max_failures, float(window_s), max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, addr: str, now: float) -> deque[float]:
        times = self._failures.get(addr, deque(maxlen=self.max_failures))  # the last few are all a block needs
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def blocked(self, addr: str) -> float:
        """Seconds until ``addr`` may try again (0.0 = not blocked)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(addr, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window_s - now)

    def fail(self, addr: str, what: str, path: str) -> float:
        """Record a failure; returns ``blocked(addr)`` as it was before it (0.0: answer it as a plain failure)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(addr, now)
            was_blocked = len(times) >= self.max_failures
            wait = max(0.0, times[0] + self.window_s - now) if was_blocked else 0.0
            times.append(now)
            self._failures.pop(addr, None)
            self._failures[addr] = times  # most recent last: the first key is the stalest
            while len(self._failures) > self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            n = len(times)
        if not was_blocked:
            logger.warning("label server: %s from %s on %s (%d failed in the last %g s%s)", what, addr, path, n,
                           self.window_s, "; refusing its further failures with 429" if n >= self.max_failures else "")
        return wait
