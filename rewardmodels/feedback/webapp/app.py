"""The labelling web app (Flask): one page, a small JSON API, and the run's clip files.

Routes::

    GET  /                 the labelling page (templates/index.html + static/app.js, no build step)
    GET  /api/me           {"name": invited person or null, "self_declared": may this client type a name}
    GET  /api/next?labeller=NAME   reserve and return the next pair for the person, with progress
    POST /api/label        {"pair_id": str, "label": "left"|"right"|"equal"|"skip", "labeller": str} -> 200 | 4xx
    POST /api/undo         {"labeller": str} -> take back the person's last label; its pair is shown again
    GET  /api/progress     {"queued", "labelled", "labels"}
    GET  /clips/<path>     a clip file, only from the run's clip directory

Who labels (``auth.py``): a person opens their personal invitation link (``rlhf-gym label --invite NAME``) once;
every label they give is attributed to NAME, whatever a request claims. Self-declared names (the ``labeller`` field)
are accepted only on a loopback bind; on a server reachable from other machines, labelling needs an invitation. A
person holds at most one pair at a time (``LabelStore.next_pair``), so nobody can reserve the queue away.

Security (the threat is another user on the network, or a web page in the labeller's browser):
- Binding a non-loopback host without a token of at least ``auth.MIN_TOKEN_LENGTH`` characters is refused
  (InsecureBindError) before anything listens.
- With a token, every request must carry it or an invitation: ``X-Label-Token`` / ``X-Label-Invite`` or
  ``Authorization: Bearer`` header, or the cookie that ``/?token=T`` or ``/?invite=I`` sets once (HttpOnly;
  SameSite=Lax, so it is sent when a link opens the page) before redirecting to the clean URL. Tokens are compared
  in constant time; wrong tokens and invitations are logged, and a client with ``max_failures`` of them within
  ``failure_window_s`` gets 429 for its further failures (never for a valid credential: people behind one proxy or
  NAT share an address). A client is its address, or behind ``trusted_proxies`` the ``X-Forwarded-For`` one.
- On a loopback bind, the Host header must be a loopback name too: a DNS-rebinding page cannot talk to the app.
- API and clip requests that a browser marks as made by another site (``Sec-Fetch-Site``) are refused, and so are
  writes whose ``Origin`` (or, without it, ``Referer``) is not this server (or one of ``allowed_origins``, for a
  reverse proxy): a page elsewhere cannot reserve pairs, label or embed clips; only the page may be opened by link.
- POST bodies must be JSON (``Content-Type: application/json``, which a cross-site form cannot send without a CORS
  preflight that we never answer), at most ``max_body`` bytes, only the known fields, each validated; JSON nested
  too deeply for the parser is a 400, not a crash.
- ``run_tag`` confines the server to one tag: only that tag's pairs are shown, labelled, undone or counted.
- Clip paths: no absolute paths, no ``..``, no hidden files, only media extensions, and the resolved path (symlinks
  followed) must lie inside the clip directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import os
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from flask import Flask, abort, g, jsonify, redirect, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from rewardmodels.feedback.label_store import (
    CHOICES,
    AlreadyLabelledError,
    InvalidLabelError,
    LabelStore,
    LabelStoreError,
    UnknownPairError,
    check_labeller,
    clip_dir,
    labeller_key,
    store_path,
)
from rewardmodels.feedback.webapp.auth import (
    FailureLimiter,
    InsecureBindError,
    TrustedProxies,
    check_bind,
    check_token,
    host_name,
    is_loopback,
    origin_of,
    same_token,
    write_origin_ok,
)

logger = logging.getLogger(__name__)

__all__ = ["InsecureBindError", "check_bind", "create_app", "is_loopback"]

TOKEN_COOKIE = "rlhf_label_token"
TOKEN_HEADER = "X-Label-Token"
INVITE_COOKIE = "rlhf_label_invite"
INVITE_HEADER = "X-Label-Invite"
MEDIA_TYPES = {".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".webp": "image/webp", ".mp4": "video/mp4", ".webm": "video/webm"}
LABEL_FIELDS = frozenset({"pair_id", "label", "labeller"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NEEDS_INVITE = ("labelling on a server reachable from other machines needs a personal invitation link: ask whoever "
                "runs it for one (`rlhf-gym label --run DIR --invite YOUR_NAME`)")


class Refused(Exception):
    """An answer other than 200 that a route decides on: ``Refused(status, message)``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the guards and routes of one app enforce (see the module docstring)."""

    loopback: bool
    token: bytes | None
    allowed_origins: frozenset[str]
    limiter: FailureLimiter
    run_tag: str | None
    undo_s: float
    proxies: TrustedProxies


def _error(status: int, message: str):
    response = jsonify({"ok": False, "error": message})
    response.status_code = status
    return response


def _safe_clip(root: Path, name: str) -> Path | None:
    """The file ``name`` inside ``root``, or None if the name or its resolved target falls outside it."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return None
    parts = PurePosixPath(name).parts
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if PurePosixPath(name).suffix.lower() not in MEDIA_TYPES:
        return None
    try:
        path = (root / name).resolve(strict=True)
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def create_app(run_dir: str | os.PathLike | None = None, *, store: LabelStore | None = None,
               clip_root: str | os.PathLike | None = None, host: str = "127.0.0.1", token: str | None = None,
               run_tag: str | None = None, max_body: int = 16 * 1024, allowed_origins: tuple[str, ...] = (),
               undo_s: float = 300.0, max_failures: int = 10, failure_window_s: float = 60.0,
               trusted_proxies: tuple[str, ...] = ()) -> Flask:
    """Build the app for a run directory (``run_dir/labels.sqlite``, ``run_dir/clips/``), or an explicit store and
    clip directory. ``host`` is the interface it will be served on: it decides the token, Host-header and
    self-declared-name rules. ``allowed_origins``: extra origins (``https://labels.example.org``) whose pages may
    write, for a reverse proxy. ``undo_s``: how old a label may be and still be undone. ``trusted_proxies``:
    addresses or networks of reverse proxies whose ``X-Forwarded-For`` names the client (``auth.TrustedProxies``)."""
    check_token(token)
    check_bind(host, token)
    origins = frozenset(filter(None, map(origin_of, allowed_origins)))
    if len(origins) != len(allowed_origins):
        raise ValueError(f"allowed_origins must be http(s) URLs such as 'https://labels.example.org', got "
                         f"{allowed_origins!r}")
    if store is None:
        if run_dir is None:
            raise ValueError("give run_dir, or store= and clip_root=")
        store = LabelStore(store_path(run_dir))
    root = Path(clip_root) if clip_root is not None else clip_dir(run_dir) if run_dir is not None else None
    if root is None:
        raise ValueError("give clip_root= (the only directory clips are served from)")
    root.mkdir(parents=True, exist_ok=True)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=max_body)
    app.url_map.merge_slashes = False  # '/clips//etc/passwd' reaches the clip check (-> 404), not a redirect
    app.extensions["label_store"] = store
    policy = Policy(is_loopback(host), token.encode() if token else None, origins,
                    FailureLimiter(max_failures, failure_window_s), run_tag, float(undo_s),
                    TrustedProxies(trusted_proxies))
    _add_guards(app, store, policy)
    _add_routes(app, store, root, policy)
    return app


def _refuse(status: int, message: str, headers: dict[str, str] | None = None):
    """An error answer: JSON for the API, plain text for pages and clips."""
    if request.path.startswith("/api/"):
        response = _error(status, message)
        response.headers.update(headers or {})
        return response
    return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}


def _presented(header: str, cookie: str) -> str | None:
    auth = request.headers.get("Authorization", "")
    if header == TOKEN_HEADER and auth.startswith("Bearer "):
        return auth[7:]
    return request.headers.get(header) or request.cookies.get(cookie)


def _with_cookie(name: str, value: str):
    """Redirect to the clean URL (the secret leaves the address bar and history), setting the cookie."""
    response = redirect(request.path)
    response.set_cookie(name, value, httponly=True, samesite="Lax", secure=request.is_secure)
    return response


def _failed(policy: Policy, what: str, message: str):
    """A wrong credential: 403, or 429 once its client has failed too often (``auth.FailureLimiter``)."""
    client = policy.proxies.client(request.remote_addr or "unknown", request.headers.get("X-Forwarded-For"))
    wait = policy.limiter.fail(client, what, request.path)
    if wait:
        return _refuse(429, f"too many wrong tokens from this address; check the link you were given, or try again "
                            f"in {wait:.0f} s", {"Retry-After": str(max(1, round(wait)))})
    return _refuse(403, message)


def _authenticate(store: LabelStore, policy: Policy):
    """Set ``g.person`` from an invitation; check the shared token; None when the request may proceed.

    A valid credential always passes: the failure limit refuses only further failures (``auth.FailureLimiter``)."""
    invite = request.args.get("invite") or _presented(INVITE_HEADER, INVITE_COOKIE)
    g.person = store.person(invite) if invite else None
    if invite and g.person is None:
        return _failed(policy, "unknown or revoked invitation",
                       "this invitation link is not valid (revoked or replaced); ask for a new one")
    if "invite" in request.args:
        return _with_cookie(INVITE_COOKIE, request.args["invite"])
    if policy.token is None:
        return None
    if "token" in request.args:
        if not same_token(request.args["token"], policy.token):
            return _failed(policy, "wrong access token", "wrong access token")
        return _with_cookie(TOKEN_COOKIE, request.args["token"])
    if g.person is not None:  # an invitation is a credential on its own
        return None
    presented = _presented(TOKEN_HEADER, TOKEN_COOKIE)
    if presented is None:
        return _refuse(401, "an access token is required: open your invitation link (or the URL with ?token=...) "
                            "once")
    if not same_token(presented, policy.token):
        return _failed(policy, "wrong access token", "wrong access token")
    return None


def _add_guards(app: Flask, store: LabelStore, policy: Policy) -> None:
    """The security rules of the module docstring: Host header, cross-site requests, origins, credentials."""

    @app.before_request
    def guard():
        if policy.loopback and not is_loopback(host_name(request.host or "")):
            return _refuse(403, "this labelling server only answers to localhost / 127.0.0.1")
        if request.path != "/" and request.headers.get("Sec-Fetch-Site", "same-origin") not in (
                "same-origin", "none"):  # browsers say when another site makes the request; scripts send nothing
            return _refuse(403, "cross-site requests are not allowed")
        if request.method not in SAFE_METHODS and not write_origin_ok(
                request.headers.get("Origin"), request.headers.get("Referer"), request.host_url.rstrip("/"),
                policy.allowed_origins):
            return _refuse(403, "writes from another origin are not allowed (behind a reverse proxy, start the "
                                "server with --public-url https://its-public-address)")
        return _authenticate(store, policy)

    @app.after_request
    def headers(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self'; media-src 'self'; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'")
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            return _error(exc.code or 500, exc.description or exc.name)
        return exc

    @app.errorhandler(Refused)
    def refused(exc: Refused):
        return _refuse(exc.status, exc.message)


def _pair_json(pair: dict[str, Any]) -> dict[str, Any]:
    """A reserved pair as the page shows it: texts, or clip URLs under ``/clips/``."""
    payload, out = pair["payload"], {"pair_id": pair["pair_id"], "kind": pair["kind"]}
    if pair["kind"] == "text":
        out.update({k: payload[k] for k in ("prompt", "response_a", "response_b", "turns_a", "turns_b")
                    if k in payload})
    elif "clip_a" in payload:
        out.update(clip_a="/clips/" + quote(payload["clip_a"]), clip_b="/clips/" + quote(payload["clip_b"]))
    else:
        out.update(clip="/clips/" + quote(payload["clip"]))
    return out


def _who(claimed: Any, policy: Policy) -> str:
    """The person a request labels as: its invitation's, or (loopback only) the name it declares."""
    person = g.get("person")
    if person is not None:
        if claimed is not None and (not isinstance(claimed, str) or labeller_key(claimed) != labeller_key(person)):
            raise Refused(403, f"your invitation is for {person!r}; you cannot label as {claimed!r}")
        return person
    if not policy.loopback:
        raise Refused(403, NEEDS_INVITE)
    try:
        return check_labeller(claimed)
    except InvalidLabelError as exc:
        raise Refused(400, str(exc)) from exc


def _json_body(required: frozenset[str], allowed: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object with ``required`` fields and nothing outside ``allowed``; Refused otherwise."""
    if request.mimetype != "application/json":
        raise Refused(415, "send the body as JSON with Content-Type: application/json")
    try:  # RecursionError: '[[[[...' deeper than the parser's stack is bad input, not a server error
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise Refused(400, f"the body must be a JSON object with the fields {sorted(allowed)}")
    if not required <= set(body) <= allowed:
        raise Refused(400, f"the body must have the fields {sorted(required)} (and optionally "
                           f"{sorted(allowed - required)}), got {sorted(body)}")
    return body


def _add_routes(app: Flask, store: LabelStore, root: Path, policy: Policy) -> None:
    """The page, the JSON API and the clip files (routes in the module docstring)."""
    run_tag = policy.run_tag

    @app.get("/")
    def index():
        return render_template("index.html", choices=list(CHOICES))

    @app.get("/api/me")
    def me():
        return jsonify({"name": g.get("person"), "self_declared": g.get("person") is None and policy.loopback})

    @app.get("/api/progress")
    def progress():
        return jsonify({**store.progress(run_tag), "notes": store.notes()})

    @app.get("/api/next")
    def next_pair():
        pair = store.next_pair(_who(request.args.get("labeller"), policy), run=run_tag)
        return jsonify({"pair": _pair_json(pair) if pair else None, "progress": store.progress(run_tag),
                        "notes": store.notes()})

    @app.post("/api/label")
    def label():
        body = _json_body(frozenset({"pair_id", "label"}), LABEL_FIELDS)
        if not isinstance(body["label"], str) or body["label"] not in CHOICES:
            raise Refused(400, f"label must be one of {list(CHOICES)}")
        if g.get("person") is None and "labeller" not in body:
            raise Refused(400, "the body must name the labeller (or open your invitation link)")
        try:
            value = store.submit(body["pair_id"], body["label"], _who(body.get("labeller"), policy), run=run_tag)
        except InvalidLabelError as exc:
            raise Refused(400, str(exc)) from exc
        except UnknownPairError as exc:
            raise Refused(404, str(exc)) from exc
        except AlreadyLabelledError as exc:
            raise Refused(409, str(exc)) from exc
        return jsonify({"ok": True, "pair_id": body["pair_id"], "label": None if value != value else value,
                        "progress": store.progress(run_tag)})

    @app.post("/api/undo")
    def undo():
        body = _json_body(frozenset(), frozenset({"labeller"}))
        try:
            pair_id = store.undo_last(_who(body.get("labeller"), policy), run=run_tag, within_s=policy.undo_s)
        except LabelStoreError as exc:
            raise Refused(409, str(exc)) from exc
        if pair_id is None:
            raise Refused(404, "you have no label to undo")
        return jsonify({"ok": True, "pair_id": pair_id, "progress": store.progress(run_tag)})

    @app.get("/clips/<path:name>")
    def clip(name: str):
        path = _safe_clip(root, name)
        if path is None:
            abort(404)
        mimetype = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        return send_file(path, mimetype=mimetype, conditional=True, max_age=3600)
