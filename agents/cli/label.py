"""``rlhf-gym label --run DIR``: open the labelling web app on a run's label store.

People open the printed URL, enter a name, and label the pairs the loop queued (``--labeller human``) with the
buttons or keys 1/left, 2/right, 0/E equal, S skip. Labels land in ``DIR/labels.sqlite`` the moment the server
answers; clips are served only from ``DIR/clips/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from rewardmodels.feedback.label_store import LabelStore, clip_dir, store_path
from rewardmodels.feedback.webapp import InsecureBindError, check_bind, create_app, server_url, start_server

logger = logging.getLogger(__name__)

TOKEN_ENV = "RLHF_GYM_LABEL_TOKEN"


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory (holds labels.sqlite and clips/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind; anything but loopback needs --token (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"access token every request must carry (default: ${TOKEN_ENV}); required when "
                             f"--host is not loopback")
    parser.add_argument("--run-tag", default=None, help="show only pairs queued with this tag (default: all)")
    parser.add_argument("--lease", type=float, default=300.0,
                        help="seconds a shown pair stays reserved for its labeller (default 300)")
    parser.add_argument("--export-text", type=Path, default=None, metavar="FILE",
                        help="write the labelled text pairs as JSONL {prompt, response_a, response_b, label} "
                             "(the TextPreferencePairs format) and exit, without serving")
    parser.add_argument("--labels-per-pair", type=int, default=None,
                        help="different people per pair; only when creating a new store (default 1)")


def _stop(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if not (0 <= args.port <= 65535):
        logger.error("--port must be 0..65535, got %d", args.port)
        return 2
    try:
        check_bind(args.host, args.token)  # before touching anything
    except InsecureBindError as exc:
        logger.error("%s", exc)
        return 2
    if not args.run.is_dir():
        logger.error("run directory %s does not exist; pass the DIR of a run started with --labeller human",
                     args.run)
        return 2
    store = LabelStore(store_path(args.run), labels_per_pair=args.labels_per_pair, lease_s=args.lease)
    if args.export_text is not None:
        n = store.export_text_jsonl(args.export_text, run=args.run_tag)
        print(f"wrote {n} labelled text pairs to {args.export_text}", flush=True)
        store.close()
        return 0
    app = create_app(store=store, clip_root=clip_dir(args.run), host=args.host, token=args.token,
                     run_tag=args.run_tag)
    server = start_server(app, args.host, args.port, args.token)
    url = server_url(server)
    progress = store.progress(args.run_tag)
    # stdout, flushed: scripts (and the tests) read the URL from the first line.
    print(f"Labelling server for {args.run} on {url}", flush=True)
    if args.token:
        print(f"Open {url}?token=<your token> once in each browser.", flush=True)
    logger.info("%d pairs queued, %d labelled; Ctrl-C to stop", progress["queued"], progress["labelled"])
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopping the labelling server")
    finally:
        server.server_close()
        store.close()
    return 0
