"""The labelling web app (Flask): one page, a small JSON API, and the run's clip files.

Routes::

    GET  /                 the labelling page (templates/index.html + static/app.js, no build step)
    GET  /api/next?labeller=NAME   reserve and return the next pair for NAME, with progress
    POST /api/label        {"pair_id": str, "label": "left"|"right"|"equal"|"skip", "labeller": str} -> 200 | 4xx
    GET  /api/progress     {"queued", "labelled", "labels"}
    GET  /clips/<path>     a clip file, only from the run's clip directory

Security (the threat is another user on the network, or a web page in the labeller's browser):
- Binding a non-loopback host without a token is refused (InsecureBindError) before anything listens.
- With a token, every request must carry it: ``X-Label-Token`` or ``Authorization: Bearer`` header, or the cookie
  that ``/?token=T`` sets once (HttpOnly; SameSite=Lax, so it is sent when a link opens the page) before
  redirecting to the clean URL. Compared in constant time (hmac.compare_digest).
- On a loopback bind, the Host header must be a loopback name too: a DNS-rebinding page cannot talk to the app.
- API and clip requests that a browser marks as made by another site (``Sec-Fetch-Site``) are refused, so a page
  elsewhere cannot reserve pairs or embed clips; only the page itself may be opened from a link.
- POST bodies must be JSON (``Content-Type: application/json``, which a cross-site form cannot send without a CORS
  preflight that we never answer), at most ``max_body`` bytes, exactly the three fields, each validated.
- Clip paths: no absolute paths, no ``..``, no hidden files, only media extensions, and the resolved path (symlinks
  followed) must lie inside the clip directory.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import mimetypes
import os
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from flask import Flask, abort, jsonify, redirect, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from rewardmodels.feedback.label_store import (
    CHOICES,
    AlreadyLabelledError,
    InvalidLabelError,
    LabelStore,
    UnknownPairError,
    check_labeller,
    clip_dir,
    store_path,
)

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "rlhf_label_token"
TOKEN_HEADER = "X-Label-Token"
MEDIA_TYPES = {".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".webp": "image/webp", ".mp4": "video/mp4", ".webm": "video/webm"}
LABEL_FIELDS = frozenset({"pair_id", "label", "labeller"})


class InsecureBindError(ValueError):
    """Serving on a non-loopback interface without an access token."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'localhost' -> 'localhost'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0]


def check_bind(host: str, token: str | None) -> None:
    """Raise InsecureBindError unless ``host`` is loopback or a non-empty ``token`` is set."""
    if not is_loopback(host) and not token:
        raise InsecureBindError(
            f"refusing to serve on {host!r} (reachable from other machines) without an access token; pass "
            f"--token (e.g. `--token $(python -c 'import secrets; print(secrets.token_urlsafe(24))')`) or bind "
            f"127.0.0.1")


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
               run_tag: str | None = None, max_body: int = 16 * 1024) -> Flask:
    """Build the app for a run directory (``run_dir/labels.sqlite``, ``run_dir/clips/``), or an explicit store and
    clip directory. ``host`` is the interface it will be served on: it decides the token and Host-header rules."""
    check_bind(host, token)
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
    _add_guards(app, is_loopback(host), token.encode() if token else None)
    _add_routes(app, store, root, run_tag)
    return app


def _refuse(status: int, message: str):
    """An error answer: JSON for the API, plain text for pages and clips."""
    if request.path.startswith("/api/"):
        return _error(status, message)
    return message + "\n", status, {"Content-Type": "text/plain; charset=utf-8"}


def _presented_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    return request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)


def _add_guards(app: Flask, loopback: bool, token_bytes: bytes | None) -> None:
    """The security rules of the module docstring: Host header, cross-site requests, token; response headers."""

    def token_ok(value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), token_bytes)

    @app.before_request
    def guard():
        if loopback and not is_loopback(_host_name(request.host or "")):
            return _refuse(403, "this labelling server only answers to localhost / 127.0.0.1")
        if request.path != "/" and request.headers.get("Sec-Fetch-Site", "same-origin") not in (
                "same-origin", "none"):  # browsers say when another site makes the request; scripts send nothing
            return _refuse(403, "cross-site requests are not allowed")
        if token_bytes is None:
            return None
        if "token" in request.args:
            if not token_ok(request.args["token"]):
                return _refuse(403, "wrong access token")
            response = redirect(request.path)  # drop the token from the address bar and history
            response.set_cookie(TOKEN_COOKIE, request.args["token"], httponly=True, samesite="Lax")
            return response
        presented = _presented_token()
        if presented is None:
            return _refuse(401, "an access token is required: open the URL with ?token=... once")
        if not token_ok(presented):
            return _refuse(403, "wrong access token")
        return None

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


def _pair_json(pair: dict[str, Any]) -> dict[str, Any]:
    """A reserved pair as the page shows it: texts, or clip URLs under ``/clips/``."""
    payload, out = pair["payload"], {"pair_id": pair["pair_id"], "kind": pair["kind"]}
    if pair["kind"] == "text":
        out.update({k: payload[k] for k in ("prompt", "response_a", "response_b")})
    elif "clip_a" in payload:
        out.update(clip_a="/clips/" + quote(payload["clip_a"]), clip_b="/clips/" + quote(payload["clip_b"]))
    else:
        out.update(clip="/clips/" + quote(payload["clip"]))
    return out


def _add_routes(app: Flask, store: LabelStore, root: Path, run_tag: str | None) -> None:
    """The page, the JSON API and the clip files (routes in the module docstring)."""

    @app.get("/")
    def index():
        return render_template("index.html", choices=list(CHOICES))

    @app.get("/api/progress")
    def progress():
        return jsonify(store.progress(run_tag))

    @app.get("/api/next")
    def next_pair():
        try:
            labeller = check_labeller(request.args.get("labeller"))
        except InvalidLabelError as exc:
            return _error(400, str(exc))
        pair = store.next_pair(labeller, run=run_tag)
        return jsonify({"pair": _pair_json(pair) if pair else None, "progress": store.progress(run_tag)})

    @app.post("/api/label")
    def label():
        if request.mimetype != "application/json":
            return _error(415, "send the label as JSON with Content-Type: application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object {pair_id, label, labeller}")
        if set(body) != LABEL_FIELDS:
            return _error(400, f"the body must have exactly the fields {sorted(LABEL_FIELDS)}, got {sorted(body)}")
        if not isinstance(body["label"], str) or body["label"] not in CHOICES:
            return _error(400, f"label must be one of {list(CHOICES)}")
        try:
            value = store.submit(body["pair_id"], body["label"], body["labeller"])
        except InvalidLabelError as exc:
            return _error(400, str(exc))
        except UnknownPairError as exc:
            return _error(404, str(exc))
        except AlreadyLabelledError as exc:
            return _error(409, str(exc))
        return jsonify({"ok": True, "pair_id": body["pair_id"], "label": None if value != value else value,
                        "progress": store.progress(run_tag)})

    @app.get("/clips/<path:name>")
    def clip(name: str):
        path = _safe_clip(root, name)
        if path is None:
            abort(404)
        mimetype = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        return send_file(path, mimetype=mimetype, conditional=True, max_age=3600)
