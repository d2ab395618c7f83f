"""The ``rlhf-gym`` command line: one sub-command per use case.

Each sub-command lives in ``agents/cli/<name>.py`` and provides ``add_parser(subparsers)`` and ``run(args)``;
modules are imported only when their sub-command runs, so ``rlhf-gym --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prefs": ("agents.cli.prefs", "learn a reward from segment preferences and train any SB3 agent on it"),
    "text": ("agents.cli.text", "RLHF on TextGen-v0: reward model from text preferences, then PPO/GRPO/RLOO/DPO"),
    "label": ("agents.cli.label", "open the labelling web app on a run directory"),
    "build-default-lm": ("textenv.default_lm.build", "rebuild the offline default language model"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="rlhf-gym", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_parser(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    result = importlib.import_module(args._module).run(args)
    return int(result or 0)

