"""The settings of a default-LM build (``BuildConfig``) and their command-line flags, in a module that imports no
torch (``rlhf-gym build-default-lm --help`` stays fast); the build itself is ``textenv.default_lm.build``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass

from textenv.default_lm import DEFAULT_LM_PATH


@dataclass
class BuildConfig:
    """Settings of one default-LM build. ``assets/build_info.json`` records those of the committed model (the
    defaults, except ``threads=1``: on a CPU shared with other jobs, two threads per process collapse)."""

    out: str = str(DEFAULT_LM_PATH)
    """Directory to write the model and tokenizer into (created; files in it are replaced)."""
    steps: int = 1200
    """Optimizer steps."""
    seed: int = 0
    """Seed of the corpus, the initialisation and the batch order."""
    num_reviews: int = 60_000
    """Training reviews generated from the grammar (another 500, from a different stream, measure held-out loss)."""
    batch_size: int = 64
    """Reviews per optimizer step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 60
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    n_layer: int = 3
    """Transformer blocks."""
    n_embd: int = 128
    """Width of the residual stream."""
    n_head: int = 4
    """Attention heads."""
    n_positions: int = 128
    """Longest context (prompt + completion) the model supports."""
    position_jitter: float = 0.5
    """Fraction of training rows whose position ids start at a random offset instead of 0. Makes the model tolerate
    callers that left-pad prompts without passing position ids derived from the attention mask."""
    threads: int = 2
    """torch CPU threads."""
    log_every: int = 100
    """Log the training loss every this many steps."""
    eval_samples: int = 200
    """Completions of the default prompts to sample after training for the sentiment report in build_info.json
    (0: skip)."""
    max_new_tokens: int = 48
    """Completion length limit of the sentiment report's samples (and of the saved generation config)."""

    def __post_init__(self) -> None:
        for name in ("steps", "num_reviews", "batch_size", "n_layer", "n_embd", "n_head", "n_positions", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}; pass a positive --{name}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); change either")
        if not 0.0 <= self.position_jitter <= 1.0:
            raise ValueError(f"position_jitter must be in [0, 1], got {self.position_jitter}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def add_parser(parser: argparse.ArgumentParser) -> None:
    """Add the build settings (one flag per :class:`BuildConfig` field) to ``parser``."""
    docs = _field_docs()
    for field in dataclasses.fields(BuildConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(field.default), default=field.default, help=docs.get(field.name, ""))


def _field_docs() -> dict[str, str]:
    """Field docstrings of :class:`BuildConfig` (the attribute docstrings below each field) for ``--help``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(BuildConfig)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body[:-1], body[1:], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs
