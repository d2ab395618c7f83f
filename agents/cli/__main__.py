"""``python -m agents.cli``: the same as ``rlhf-gym``."""

from agents.cli import main

raise SystemExit(main())
