"""``rlhf-gym build-default-lm``: rebuild the offline default LM (``textenv.default_lm.build``); one flag per
``BuildConfig`` field."""

from __future__ import annotations

import argparse

from textenv.default_lm.settings import add_parser

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    from textenv.default_lm.build import run as build  # the command boundary: torch loads here

    return build(args)
