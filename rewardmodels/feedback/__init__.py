"""Human feedback: the SQLite label store, the human and mixed labellers, clips for people, the labelling web app.

- ``label_store``: ``LabelStore`` (queued pairs, leases, labels; WAL mode, nothing acknowledged is ever lost).
- ``human``: ``HumanLabeller`` (queues pairs and waits for people), ``MixedLabeller`` (people + a teacher),
  ``StateRenderer`` (classic-control states to frames).
- ``clips``: side-by-side clips of two segments (GIF, MP4 where ffmpeg is available).
- ``webapp``: the labelling page and its JSON API (``rlhf-gym label --run DIR``).
"""

from rewardmodels.feedback.human import HumanLabeller, MixedLabeller, StateRenderer, check_renderable
from rewardmodels.feedback.label_store import (
    AlreadyLabelledError,
    InvalidLabelError,
    LabelStore,
    LabelStoreError,
    LabelTimeoutError,
    Query,
    UnknownPairError,
)

__all__ = [
    "AlreadyLabelledError", "HumanLabeller", "InvalidLabelError", "LabelStore", "LabelStoreError",
    "LabelTimeoutError", "MixedLabeller", "Query", "StateRenderer", "UnknownPairError", "check_renderable",
]
