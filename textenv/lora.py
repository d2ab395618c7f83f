"""LoRA adapters through ``peft`` (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): wrap a
model, view its base with the adapters disabled (the RLHF reference, with no copy of the weights), save and load the
adapters.

The lowest layer that needs them: the LLM agents (``agents.llm``) and the LM reward model
(``rewardmodels.text.lm_reward``) both train through them::

    policy = apply_lora(model, LoraSettings(r=8, alpha=16))   # base frozen, adapters trainable, in place
    ref = reference_view(policy)                               # the base model: adapters disabled while it runs
    env = TextGenVectorEnv(..., model=policy, ref_model=ref)   # or let the agent build the view (kl_coef=0 env)
    policy.save_pretrained(path)                               # the adapters only (adapter_config.json + weights)
    policy = load_lora(AutoModelForCausalLM.from_pretrained(base), path)

The fast decoders (``textenv.decoders``) do not know LoRA: a ``peft`` model, and a base model whose projections
``peft`` replaced, have no fast decoder (their module types differ, so ``fast_decoder`` returns None and the caller
runs the model's own forward). ``merge_and_unload()`` puts plain layers back, with the adapters folded into the
weights, and the fast path serves the merged model again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn


class LoraUnavailableError(ImportError):
    """``peft`` is not installed."""


def _peft():
    try:
        import peft
    except ImportError as exc:  # an optional extra: say how to get it
        raise LoraUnavailableError("LoRA needs peft: pip install 'rlhf-gym[lora]' (or pip install peft)") from exc
    return peft


@dataclasses.dataclass
class LoraSettings:
    """LoRA hyperparameters (Hu et al. 2022); the update of a weight ``W`` is ``(alpha / r) * B @ A``."""

    r: int = 8
    """Rank of the adapters (the paper finds 1-8 enough on GPT-3's attention projections)."""
    alpha: float = 16.0
    """Scale numerator: the adapter output is multiplied by ``alpha / r`` (peft's ``lora_alpha``)."""
    dropout: float = 0.0
    """Dropout on the adapters' input. The agents train with dropout off (old and new log-probs must come from the
    same function), so a value > 0 only acts where a model is put in training mode."""
    targets: tuple[str, ...] | None = None
    """Module names (or name suffixes) that get adapters, e.g. ``("q_proj", "v_proj")``; None = peft's default for
    the architecture (GPT-2: ``c_attn``; Llama, Qwen2, Mistral: ``q_proj``, ``v_proj``); ``("all-linear",)`` = every
    linear layer except the output head."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):  # a single name, or "a,b" as a CLI gives it
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        elif self.targets is not None:
            self.targets = tuple(self.targets)
        if not (isinstance(self.r, int) and self.r >= 1):
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r} (alpha / r scales the adapters)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None and not self.targets:
            raise ValueError("LoRA targets is empty: name the modules to adapt (e.g. q_proj,v_proj) or give None")


def is_peft_model(model: Any) -> bool:
    """True for a ``peft.PeftModel`` (what :func:`apply_lora` and :func:`load_lora` return)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _has_conv1d_targets(model: nn.Module, targets) -> bool:
    """GPT-2 style ``Conv1D`` layers store ``W`` as (in, out): peft must be told (``fan_in_fan_out``)."""
    from transformers.pytorch_utils import Conv1D

    names = None if targets is None or targets == ("all-linear",) else set(targets)
    for name, module in model.named_modules():
        if type(module) is Conv1D and (names is None or name.rsplit(".", 1)[-1] in names or name in names):
            return True
    return False


def apply_lora(model: nn.Module, settings: LoraSettings, task_type: str = "CAUSAL_LM") -> nn.Module:
    """``model`` with LoRA adapters: a ``peft.PeftModel`` whose base weights are frozen and whose adapters train.

    The adapters are injected into ``model`` in place (``model`` itself then computes with them; its parameters are
    not copied). A model that is already a ``PeftModel`` is returned as it is (its own adapters are used).
    ``task_type`` is peft's: ``"CAUSAL_LM"`` for a policy, ``"FEATURE_EXTRACTION"`` for a bare transformer such as a
    reward model's backbone (whose scalar head, a separate module, trains in full). Raises ``ValueError`` when a
    target names no module of the model.
    """
    if is_peft_model(model):
        return model
    peft = _peft()
    targets = list(settings.targets) if settings.targets is not None else None
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=_has_conv1d_targets(model, settings.targets),
        task_type=task_type,
    )
    training = model.training
    try:
        # The wrapper takes the model's mode (a new nn.Module starts in training mode; a caller that restores "the
        # wrapper's mode" recursively would otherwise switch the model's dropout on).
        return peft.get_peft_model(model, config).train(training)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"LoRA targets {settings.targets} do not fit {type(model).__name__} ({exc}); name some of its layers, "
            f"e.g. from {names[:12]}, or give targets=None for peft's default"
        ) from exc


def load_lora(model: nn.Module, directory: str | os.PathLike, trainable: bool = True) -> nn.Module:
    """The base ``model`` with the adapters saved in ``directory`` (``PeftModel.save_pretrained``, which a LoRA
    agent's checkpoint holds); trainable unless ``trainable=False``."""
    peft = _peft()
    if not os.path.isfile(os.path.join(os.fspath(directory), "adapter_config.json")):
        raise FileNotFoundError(
            f"{os.fspath(directory)!r} holds no adapter_config.json: it is not a LoRA checkpoint (a full model loads "
            "with AutoModelForCausalLM.from_pretrained)"
        )
    training = model.training
    return peft.PeftModel.from_pretrained(model, os.fspath(directory), is_trainable=trainable).train(training)


def load_adapter_weights(peft_model: nn.Module, directory: str | os.PathLike) -> None:
    """Load the adapter weights saved in ``directory`` (``save_pretrained`` of a peft model of the same settings)
    into ``peft_model`` in place: resuming a LoRA run, where the model object is already built."""
    peft = _peft()
    from safetensors.torch import load_file

    path = os.path.join(os.fspath(directory), "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(directory)!r} holds no adapter_model.safetensors: not a LoRA checkpoint")
    result = peft.set_peft_model_state_dict(peft_model, load_file(path))
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{path} has adapter weights this model lacks ({missing[:3]}...): other LoRA settings")


def _forward_params(model: nn.Module):
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


class AdapterDisabledView(nn.Module):
    """The base of a ``PeftModel`` as a model of its own: each call runs the peft model inside
    ``disable_adapter()``, so it computes the base weights' function with no copy of them.

    The peft model is held outside the module tree on purpose: ``ref.eval().requires_grad_(False)`` (what a frozen
    reference gets) must not freeze the adapters or change the policy's mode, and ``ref.parameters()`` is empty, so
    an optimizer or a checkpoint of the reference holds nothing twice. Calls follow the policy's mode (the agents
    keep it in eval mode: dropout off).
    """

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        if not hasattr(peft_model, "disable_adapter"):
            raise TypeError(
                f"reference_view needs a peft.PeftModel (from apply_lora or load_lora), got {type(peft_model).__name__}"
            )
        self._peft = [peft_model]  # a list: not registered as a submodule (see the class docstring)
        # transformers 5.x renamed the KV-cache argument past_key_values -> cache; callers may use either.
        self._cache_name = "cache" if "cache" in _forward_params(peft_model) else "past_key_values"

    @property
    def peft_model(self) -> nn.Module:
        return self._peft[0]

    @property
    def config(self):
        return self.peft_model.config

    def get_output_embeddings(self):
        return self.peft_model.get_output_embeddings()

    def forward(self, *args: Any, **kwargs: Any):
        for old in ("past_key_values", "cache"):
            if old != self._cache_name and old in kwargs:
                kwargs[self._cache_name] = kwargs.pop(old)
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


def reference_view(peft_model: nn.Module) -> AdapterDisabledView:
    """The reference model of RLHF for a LoRA policy: its base, adapters disabled (:class:`AdapterDisabledView`)."""
    return AdapterDisabledView(peft_model)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (for logs: a LoRA model trains a small fraction)."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


@torch.no_grad()
def base_copy(model: nn.Module) -> nn.Module:
    """A plain copy of ``model``'s base weights: for a LoRA model (a peft model, or its adapters-disabled view) the
    base without adapters; any other model deep-copied. What a second model that trains in full (an LM reward model)
    starts from."""
    import copy

    if isinstance(model, AdapterDisabledView):
        model = model.peft_model
    if is_peft_model(model):
        return copy.deepcopy(model).unload()
    return copy.deepcopy(model)


@torch.no_grad()
def merged_copy(peft_model: nn.Module) -> nn.Module:
    """A plain model with the adapters folded into its weights (``merge_and_unload`` of a deep copy), for export
    or for the fast decoders; ``peft_model`` keeps its adapters."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()
