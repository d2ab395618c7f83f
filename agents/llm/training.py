"""Training settings every LLM trainer shares (RL agents and offline trainers): LoRA, gradient checkpointing, bf16
autocast and gradient accumulation, and the helpers that make each of them take effect.

- LoRA (Hu et al. 2022) through ``peft`` (``textenv.lora``): the base is frozen, the adapters train, and the
  reference is the base with the adapters disabled (:func:`frozen_reference`): no copy of the weights.
- Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): transformers
  checkpoints a decoder layer only when the layer is in training mode, but the agents train in eval mode (dropout
  off: old and new log-probs must come from one function). :func:`checkpointing_active` sets the training flag of the
  checkpointed layers only (not of their children, so dropout stays off) for the duration of a training forward.
- bf16 autocast (CUDA only): matrix products in bfloat16, losses in float32 (``sequence_forward`` upcasts logits).
- Gradient accumulation: a minibatch is split into ``gradient_accumulation_steps`` chunks whose losses are weighted
  by their share of the minibatch's loss units (tokens for a token-mean loss, rows for a per-row mean), so the
  accumulated gradient equals the whole minibatch's (:func:`chunk_weights`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from textenv.lora import LoraSettings, apply_lora, is_peft_model, reference_view


@dataclasses.dataclass(kw_only=True)
class TrainingSettings:
    """How a trainer spends memory (keyword-only; every LLM agent's and offline trainer's config has these)."""

    lora: LoraSettings | None = None
    """Train LoRA adapters (``textenv.lora.LoraSettings``) instead of all weights; the reference is then the base
    with the adapters disabled (no copy). None: full fine-tuning (a model that already is a ``peft`` model keeps its
    adapters either way)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (memory for about one
    extra forward); needs a transformers model that supports it."""
    bf16: bool = False
    """Run the training forwards under ``torch.autocast(dtype=bfloat16)``; CUDA only."""
    gradient_accumulation_steps: int = 1
    """Split each minibatch into this many chunks, one forward/backward each, and step once: the same gradient as
    the whole minibatch with a chunk's activations in memory."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # a config read back from config.json
            self.lora = LoraSettings(**self.lora)
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise TypeError(f"lora must be a textenv.lora.LoraSettings or None, got {type(self.lora).__name__}")
        steps = self.gradient_accumulation_steps
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {steps!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a DDP wrapper and/or a ``peft`` model."""
    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return model.get_base_model() if is_peft_model(model) else model


def prepare_policy(model: nn.Module, settings: TrainingSettings) -> nn.Module:
    """``model`` ready to train under ``settings``: with LoRA adapters (a ``peft`` model; injected in place, so
    ``model`` itself computes with them) and with gradient checkpointing enabled, as asked."""
    if settings.lora is not None:
        model = apply_lora(model, settings.lora)
    if settings.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def frozen_reference(policy: nn.Module, ref_model: nn.Module | None) -> nn.Module:
    """The frozen reference of ``policy``: ``ref_model`` if given; for a ``peft`` policy, its base with the adapters
    disabled (``textenv.lora.reference_view``: no copy of the weights); else a frozen deep copy of ``policy``."""
    if ref_model is None:
        ref_model = reference_view(policy) if is_peft_model(policy) else copy.deepcopy(policy)
    ref_model.eval().requires_grad_(False)
    return ref_model


def enable_checkpointing(model: nn.Module) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant, which works with a frozen base under LoRA)."""
    base = unwrap(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(base).__name__} does not support gradient checkpointing; set gradient_checkpointing=False"
        )
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # transformers also hooks the input embeddings to require grad, which only the reentrant variant needs; the hook
    # would keep the fast decoders (textenv.decoders, which refuse hooked models) off in every rollout.
    if hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()


def is_checkpointing(model: nn.Module) -> bool:
    """True when ``model`` (possibly wrapped) has gradient checkpointing enabled."""
    base = unwrap(model)
    if not hasattr(base, "supports_gradient_checkpointing"):  # not a transformers model
        return False
    new = hasattr(type(base), "is_activation_checkpointing")  # transformers 5.x name (the old one warns)
    return bool(getattr(base, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False))


@contextlib.contextmanager
def checkpointing_active(model: nn.Module) -> Iterator[None]:
    """Within the block, the checkpointed layers of ``model`` are in training mode (transformers recomputes them in
    the backward pass only then) while every other module keeps its mode: dropout stays off."""
    flipped = [
        m for m in unwrap(model).modules() if getattr(m, "gradient_checkpointing", False) is True and not m.training
    ]
    for m in flipped:
        m.training = True  # this module only, not its children (nn.Module.train() would recurse)
    try:
        yield
    finally:
        for m in flipped:
            m.training = False


def check_bf16(settings: TrainingSettings, device: torch.device) -> None:
    """Refuse bf16 on a device where it is not supported (at construction, not in the middle of training)."""
    if settings.bf16 and torch.device(device).type != "cuda":
        raise ValueError(
            f"bf16=True needs the model on a CUDA device (it is on {device}); set bf16=False on CPU, or move the model "
            "to a GPU"
        )


def autocast(settings: TrainingSettings, device: torch.device):
    """``torch.autocast`` to bfloat16 on CUDA when ``settings.bf16``; a no-op context otherwise."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16 and device.type == "cuda")


def split_rows(rows: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """``rows`` in ``steps`` consecutive chunks as equal as possible (fewer when there are fewer rows)."""
    return [c for c in torch.tensor_split(rows, min(steps, max(len(rows), 1))) if len(c)]


def chunk_weights(units: list[torch.Tensor], total: torch.Tensor, world_size: int = 1) -> list[torch.Tensor]:
    """Loss weights of gradient-accumulation chunks: ``units_i * world_size / total``.

    A loss that is a mean over units (tokens, rows) of a minibatch is ``sum_i units_i * mean_i / total``; with
    ``total`` the units of the whole minibatch across all processes and data-parallel gradients averaged over
    ``world_size`` processes (DDP), the weighted chunk losses give exactly the gradient of the combined minibatch.
    """
    return [u.to(total.dtype) * world_size / total.clamp(min=1) for u in units]


def backward_chunks(
    chunk_losses: list[Callable[[], tuple[torch.Tensor, dict[str, Any]]]],
    weights: list[torch.Tensor] | None,
    settings: TrainingSettings,
    device: torch.device,
    check: Callable[[torch.Tensor], None],
    no_sync: Callable[[bool], contextlib.AbstractContextManager],
) -> list[dict[str, Any]]:
    """Forward (under :func:`autocast`) and backward of each gradient-accumulation chunk, its loss times its weight
    (None: a single chunk, unweighted). ``check(loss)`` refuses a bad loss before its backward; ``no_sync(skip)``
    holds back data-parallel gradient averaging for all chunks but the last. Returns each chunk's detached metrics,
    its loss under the key ``""``."""
    outs = []
    for i, loss_fn in enumerate(chunk_losses):
        with no_sync(i < len(chunk_losses) - 1):
            with autocast(settings, device):
                loss, metrics = loss_fn()
            check(loss)
            (loss if weights is None else loss * weights[i].to(loss.device)).backward()
        outs.append({**{k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()}, "": loss.detach()})
    return outs
