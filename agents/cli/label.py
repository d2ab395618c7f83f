"""``rlhf-gym label --run DIR``: open the labelling web app on a run's label store.

People open the printed URL (on this machine), or their personal invitation link (``--invite NAME`` prints one;
needed on a server other machines can reach), and label the pairs the loop queued (``--labeller human``) with the
buttons or keys 1/left, 2/right, 0/E equal, S skip, U undo. Labels land in ``DIR/labels.sqlite`` the moment the
server answers (in the file itself, not only its WAL: a plain copy is a backup; ``--backup FILE`` makes one with
SQLite's online backup API while a server runs); clips are served only from ``DIR/clips/``.

On the open network: one client address holds at most ``--max-connections-per-client`` connections, a request must
arrive whole within ``--request-timeout`` seconds, and wrong tokens from a client are answered 429 once too many
(never its valid ones); behind a reverse proxy, ``--trusted-proxy ADDR`` makes these count the forwarded client.

The shared access token is read from ``--token-file FILE`` or ``$RLHF_GYM_LABEL_TOKEN``, not from the command line
(``--token`` still works, with a warning: every user of the machine can read it with ``ps``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from agents.cli import UsageError
from rewardmodels.feedback.label_store import InvalidLabelError, LabelStore, LabelStoreError, clip_dir, store_path
from rewardmodels.feedback.webapp import InsecureBindError, check_bind, create_app, server_url, start_server
from rewardmodels.feedback.webapp.auth import TrustedProxies, check_token, is_loopback, origin_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_ENV = "RLHF_GYM_LABEL_TOKEN"


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory (holds labels.sqlite and clips/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind; anything but loopback needs an access token of 16+ characters and "
                             "personal invitations for the labellers (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                        help=f"file whose first line is the shared access token (default: ${TOKEN_ENV})")
    parser.add_argument("--token", default=None,
                        help="the access token itself (discouraged: visible to every user in `ps`; use "
                             f"--token-file or ${TOKEN_ENV})")
    parser.add_argument("--invite", default=None, metavar="NAME",
                        help="print a personal invitation link for NAME (a new one replaces the old) and exit; "
                             "labels given through it are attributed to NAME")
    parser.add_argument("--revoke", default=None, metavar="NAME", help="invalidate NAME's invitation and exit")
    parser.add_argument("--public-url", default=None, metavar="URL",
                        help="the address people reach the server at, when it differs from http://HOST:PORT/ (a "
                             "reverse proxy): used in invitation links and accepted as an Origin for writes")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                        help="address or network (10.0.0.0/8) of a reverse proxy in front of the server, repeatable: "
                             "its X-Forwarded-For header then names the client, for the per-client connection cap "
                             "and the wrong-token limit (default: none; the header is ignored)")
    parser.add_argument("--run-tag", default=None,
                        help="serve only pairs queued with this tag: others cannot be shown, labelled or undone")
    parser.add_argument("--lease", type=float, default=300.0,
                        help="seconds a shown pair stays reserved for its labeller (default 300)")
    parser.add_argument("--undo-window", type=float, default=300.0,
                        help="seconds after labelling during which a person may undo their last label (default 300)")
    parser.add_argument("--export-text", type=Path, default=None, metavar="FILE",
                        help="write the labelled text pairs as JSONL {prompt, response_a, response_b, label} "
                             "(the TextPreferencePairs format) and exit, without serving")
    parser.add_argument("--backup", type=Path, default=None, metavar="FILE",
                        help="write a consistent copy of labels.sqlite to FILE (one self-contained file; safe while a "
                             "server is running) and exit")
    parser.add_argument("--labels-per-pair", type=int, default=None,
                        help="different people per pair; only when creating a new store (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads serving requests (default 8)")
    parser.add_argument("--max-connections", type=int, default=2000,
                        help="open connections held at once; more wait to be accepted (default 2000)")
    parser.add_argument("--idle-timeout", type=int, default=30,
                        help="seconds before a connection without traffic is closed (default 30)")
    parser.add_argument("--max-connections-per-client", type=int, default=64, metavar="N",
                        help="open connections one client address may hold; more are answered 503 (default 64; "
                             "raise it when many people share one address behind a NAT; behind a reverse proxy, "
                             "name it with --trusted-proxy instead)")
    parser.add_argument("--request-timeout", type=int, default=30, metavar="SECONDS",
                        help="seconds from a request's first byte until all of it, headers and body, must have "
                             "arrived; slower connections are closed (default 30)")


def _stop(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
    raise KeyboardInterrupt


def _check_numbers(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if not (math.isfinite(args.lease) and args.lease > 0):
        raise UsageError(f"--lease must be a number of seconds > 0, got {args.lease:g}")
    if not (math.isfinite(args.undo_window) and args.undo_window >= 0):
        raise UsageError(f"--undo-window must be a number of seconds >= 0, got {args.undo_window:g}")
    if args.labels_per_pair is not None and args.labels_per_pair < 1:
        raise UsageError(f"--labels-per-pair must be >= 1 (people who label each pair), got {args.labels_per_pair}")
    for flag, value in (("--threads", args.threads), ("--max-connections", args.max_connections),
                        ("--idle-timeout", args.idle_timeout), ("--request-timeout", args.request_timeout),
                        ("--max-connections-per-client", args.max_connections_per_client)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")


def _check_public_url(url: str | None) -> None:
    """--public-url goes into invitation links people click: only a plain http(s) address may (never
    ``javascript:``), and it must be usable as the Origin of the pages it serves."""
    if url is None:
        return
    if not (url.isprintable() and " " not in url) or origin_of(url) is None:
        raise UsageError(f"--public-url must be an http(s) URL such as https://labels.example.org, got {url!r}")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise UsageError(f"--public-url must be the server's address alone (no query, fragment or user name), "
                         f"such as https://labels.example.org, got {url!r}")


def read_token(args: argparse.Namespace) -> str | None:
    """The shared token from --token-file, --token (with a warning) or $RLHF_GYM_LABEL_TOKEN, checked."""
    if args.token_file is not None and args.token is not None:
        raise UsageError("give the access token once: --token-file or --token, not both")
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        token = lines[0].strip() if lines else ""
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty; write the token on its first line")
    elif args.token is not None:
        logger.warning("--token is visible to every user of this machine (ps, /proc); prefer --token-file FILE or "
                       "$%s", TOKEN_ENV)
        token = args.token
    else:
        token = os.environ.get(TOKEN_ENV) or None
    try:
        check_token(token)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return token


def _base_url(args: argparse.Namespace) -> str:
    if args.public_url:
        return args.public_url.rstrip("/") + "/"
    if args.port == 0:
        raise UsageError("an invitation link needs the server's real port: give --port PORT (as when serving) or "
                         "--public-url URL")
    host = args.host if is_loopback(args.host) or args.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    return f"http://{f'[{host}]' if ':' in host else host}:{args.port}/"


def _open_store(args: argparse.Namespace) -> LabelStore:
    if not args.run.is_dir():
        raise UsageError(f"run directory {args.run} does not exist; pass the DIR of a run started with "
                         f"--labeller human")
    try:
        store = LabelStore(store_path(args.run), labels_per_pair=args.labels_per_pair, lease_s=args.lease)
    except (LabelStoreError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        store.check_integrity()
    except LabelStoreError as exc:
        store.close()
        raise UsageError(str(exc)) from exc
    return store


def _write_to(flag: str, path: Path, write: Callable[[Path], T]) -> T:
    """``write(path)``, with a directory or an unwritable place (read-only, a path through a file) as a UsageError."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name, such as {path / 'labels.jsonl'}")
    try:
        return write(path)
    except OSError as exc:
        raise UsageError(f"cannot write {flag} {path}: {exc.strerror or exc}; give a file in a writable "
                         f"directory") from exc
    except LabelStoreError as exc:
        raise UsageError(str(exc)) from exc


ONE_SHOT = ("export_text", "backup", "invite", "revoke")


def _one_shot(args: argparse.Namespace, store: LabelStore) -> bool:
    """--export-text, --backup, --invite, --revoke: do it, print the result and return True (no server)."""
    if args.backup is not None:
        n = _write_to("--backup", args.backup, store.backup)
        print(f"backed up {store.path} ({n} labels) to {args.backup}", flush=True)
    elif args.export_text is not None:
        n = _write_to("--export-text", args.export_text,
                      lambda path: store.export_text_jsonl(path, run=args.run_tag))
        print(f"wrote {n} labelled text pairs to {args.export_text}", flush=True)
    elif args.invite is not None:
        base = _base_url(args)
        try:
            token = store.invite(args.invite)
        except InvalidLabelError as exc:
            raise UsageError(str(exc)) from exc
        print(f"{base}?invite={token}", flush=True)
        logger.info("send this link to %s only (it labels as them); `--invite %s` again replaces it, `--revoke %s` "
                    "cancels it", args.invite, args.invite, args.invite)
    elif args.revoke is not None:
        try:
            found = store.revoke(args.revoke)
        except InvalidLabelError as exc:
            raise UsageError(str(exc)) from exc
        print(f"revoked the invitation of {args.revoke}" if found else f"{args.revoke} had no invitation", flush=True)
    else:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Serve, invite, revoke or export; a ``UsageError`` ends in one line and exit code 2 (``agents.cli.main``)."""
    _check_numbers(args)
    _check_public_url(args.public_url)
    try:
        TrustedProxies(args.trusted_proxy)
    except ValueError as exc:
        raise UsageError(f"--trusted-proxy: {exc}") from exc
    token = read_token(args)
    chosen = [f"--{name.replace('_', '-')}" for name in ONE_SHOT if getattr(args, name) is not None]
    if len(chosen) > 1:
        raise UsageError(f"give one of {', '.join(chosen)} at a time")
    serving = not chosen
    if serving:
        try:
            check_bind(args.host, token)  # before touching anything
        except InsecureBindError as exc:
            raise UsageError(str(exc)) from exc
    store = _open_store(args)
    try:
        if _one_shot(args, store):
            return 0
        try:
            app = create_app(store=store, clip_root=clip_dir(args.run), host=args.host, token=token,
                             run_tag=args.run_tag, undo_s=args.undo_window, trusted_proxies=args.trusted_proxy,
                             allowed_origins=(args.public_url,) if args.public_url else ())
            server = start_server(app, args.host, args.port, token, threads=args.threads,
                                  connection_limit=args.max_connections, channel_timeout=args.idle_timeout,
                                  per_client=args.max_connections_per_client, request_timeout=args.request_timeout,
                                  trusted_proxies=args.trusted_proxy)
        except (ValueError, OSError) as exc:  # a bad --public-url, a port in use
            raise UsageError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
        _serve(args, store, server, token)
    finally:
        store.close()
    return 0


def _serve(args: argparse.Namespace, store: LabelStore, server, token: str | None) -> None:
    url = server_url(server)
    progress = store.progress(args.run_tag)
    # stdout, flushed: scripts (and the tests) read the URL from the first line.
    print(f"Labelling server for {args.run} on {url}", flush=True)
    if not is_loopback(args.host):
        print(f"Labellers open their invitation link (`rlhf-gym label --run {args.run} --invite NAME --port "
              f"{server.server_port}` prints one).", flush=True)
    elif token:
        print(f"Open {url}?token=<your token> once in each browser.", flush=True)
    logger.info("%d pairs queued, %d labelled; Ctrl-C to stop", progress["queued"], progress["labelled"])
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopping the labelling server")
    finally:
        server.server_close()
