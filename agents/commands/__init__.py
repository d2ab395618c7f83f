"""Sub-commands of the ``rlhf-gym`` CLI (see ``agents.cli``)."""
