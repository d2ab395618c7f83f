"""Loading the policy, its tokenizer and the reference model, and the checks that make them usable together.

A model argument may be a Hugging Face model id, a local directory in Hugging Face format, or a model object
(anything with the ``PreTrainedModel`` causal-LM interface). ``None`` means the offline default LM
(``textenv.default_lm``), loaded only then.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from textenv.default_lm import load_default_lm
from textenv.sources import ModelLoadError, locate

logger = logging.getLogger(__name__)

#: Sentinel for ``ref_model``: use a frozen copy of the initial policy (the RLHF default, Ziegler et al. 2019).
REF_COPY = "copy"


class VocabularyMismatchError(ValueError):
    """The tokenizer can produce ids that the model has no embedding/logit for."""


def resolve_device(device: str | torch.device | None, model: Any | None = None) -> torch.device:
    """``device`` if given, else the device of ``model``'s parameters, else CPU."""
    if device is not None:
        return torch.device(device)
    if model is not None and isinstance(model, torch.nn.Module):
        try:
            return next(model.parameters()).device
        except StopIteration:
            pass
    return torch.device("cpu")


def load_policy(model: Any, tokenizer: Any, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Turn the ``model``/``tokenizer`` arguments into ``(model, tokenizer)`` objects on ``device``.

    * ``model=None``: the offline default LM and its tokenizer (``tokenizer`` must then be ``None`` too, or an object).
    * ``model`` a string: a hub id or local path, loaded with ``AutoModelForCausalLM``; the tokenizer comes from
      ``tokenizer`` (string or object) or, if ``None``, from the same id/path.
    * ``model`` an object: used as is (moved to ``device`` if one is given); ``tokenizer`` is required.
    """
    if model is None:
        model, default_tok = load_default_lm(device=device)
        tokenizer = default_tok if tokenizer is None else _load_tokenizer(tokenizer)
    elif isinstance(model, (str, os.PathLike)):
        name = locate(model, "model")
        try:
            loaded = AutoModelForCausalLM.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load a causal LM from {name!r} ({exc}). Pass a local directory in Hugging Face format, "
                "a hub id reachable from this machine, or a model object with its tokenizer."
            ) from exc
        if os.path.isdir(name):  # adapters saved later record where their base lives: an absolute path
            loaded.config._name_or_path = loaded.name_or_path = name
        tokenizer = _load_tokenizer(name if tokenizer is None else tokenizer)
        model = loaded
    else:
        if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "forward", None)):
            raise ModelLoadError(
                f"model must be a Hugging Face causal LM object, a model id or a local path; got {type(model).__name__}"
            )
        if tokenizer is None:
            raise ModelLoadError(
                "a model object was given without its tokenizer: pass tokenizer=<the model's tokenizer> "
                "(or pass the model as a path/id so the tokenizer can be loaded from the same place)"
            )
        tokenizer = _load_tokenizer(tokenizer)
    if device is not None:
        model = model.to(device)
    check_vocab(model, tokenizer)
    return model, tokenizer


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in directory (or hub id) ``path``, as saved.

    A tokenizer saved under the generic class (``TokenizersBackend`` / ``PreTrainedTokenizerFast``: one built from a
    ``tokenizers.Tokenizer``) is loaded from its ``tokenizer.json`` directly: given a ``config.json`` that names a
    model family, transformers 5's ``AutoTokenizer`` substitutes that family's class (e.g. a word-level tokenizer on a
    Qwen2 model comes back as a BPE ``Qwen2Tokenizer``), which maps text to other ids.
    """
    config = Path(path) / "tokenizer_config.json"
    if config.is_file() and (Path(path) / "tokenizer.json").is_file():
        if json.loads(config.read_text()).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(os.fspath(path))
    return AutoTokenizer.from_pretrained(os.fspath(path))


def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, os.PathLike)):
        name = locate(tokenizer, "tokenizer")
        try:
            return load_tokenizer(name)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a tokenizer from {os.fspath(tokenizer)!r} ({exc})") from exc
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise ModelLoadError(f"tokenizer must be a Hugging Face tokenizer, an id or a path; got {type(tokenizer)}")
    return tokenizer


def load_reference(ref_model: Any, policy: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The reference model: ``REF_COPY`` -> frozen deep copy of ``policy``; ``None`` -> no reference; a string ->
    loaded like the policy; an object -> used as is (frozen: eval mode, no grads)."""
    if ref_model is None:
        return None
    if isinstance(ref_model, str) and ref_model == REF_COPY:
        return frozen_copy(policy)
    if isinstance(ref_model, (str, os.PathLike)):
        ref_model = AutoModelForCausalLM.from_pretrained(os.fspath(ref_model))
    if not isinstance(ref_model, torch.nn.Module):
        raise ModelLoadError(f"ref_model must be a model, an id/path, 'copy' or None; got {type(ref_model).__name__}")
    ref_model = ref_model.to(device).eval()
    ref_model.requires_grad_(False)
    if vocab_size(ref_model) != vocab_size(policy):
        raise VocabularyMismatchError(
            f"the reference model has {vocab_size(ref_model)} logits but the policy has {vocab_size(policy)}: "
            "the KL term needs both over the same vocabulary; use a reference model with the policy's tokenizer"
        )
    return ref_model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode with ``requires_grad=False`` (the reference policy of RLHF)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def vocab_size(model: Any) -> int:
    """The width of the model's logits (the size of the action space)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def max_positions(model: Any) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_vocab(model: Any, tokenizer: Any) -> None:
    """Raise ``VocabularyMismatchError`` if the tokenizer has ids the model cannot score.

    A model with *more* logits than the tokenizer has tokens is accepted: many released checkpoints pad their
    embedding matrix to a multiple of 64/128 (Pythia, Qwen), and those extra ids are simply never produced by the
    tokenizer. The action space is the model's logit width either way.
    """
    n_tok, n_model = len(tokenizer), vocab_size(model)
    if n_tok > n_model:
        raise VocabularyMismatchError(
            f"the tokenizer has {n_tok} tokens but the model only has {n_model} logits, so some token ids cannot be "
            "scored. Pass the tokenizer the model was trained with (or resize the model's embeddings with "
            "model.resize_token_embeddings(len(tokenizer)) and fine-tune it)."
        )
    if n_tok < n_model:
        logger.info("model has %d logits for %d tokenizer tokens (padded embedding matrix)", n_model, n_tok)


def pad_token_id(tokenizer: Any) -> int:
    """The id used to fill masked (left-padding) positions: pad, else EOS, else 0. Its value never matters to the
    model because those positions are masked; it only has to be a valid id. The tokenizer is not modified."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0
