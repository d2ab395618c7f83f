"""The inputs of the text commands (``rlhf-gym text``, ``rlhf-gym sft``), checked at their boundary, before a run
directory exists: the model (a causal decoder, with room for the length flags in its positions, and LoRA targets
that name its layers) and every file they read (prompts, preference pairs, demonstrations).

Reading weights and tokenizing stay with the run; here only the model's config is read (a LoRA skeleton is built on
the meta device, no memory) and the files are parsed as records, so a wrong model or a bad byte costs a second, not
a model load. Each reader raises its own error naming the file and line (``PromptError``,
``TextPreferenceFileError``, ``ModelLoadError``); these checks raise them as the CLI's ``UsageError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.cli import UsageError, usage_errors

__all__ = ["check_files", "check_model", "locate_sources"]


def check_model(model: str | None, tokenizer: str | None, lora: Any = None,
                lengths: Mapping[str, int] | None = None) -> None:
    """``model`` (None: the default LM) must be a causal decoder (``textenv.models.causal_lm_config``) with as many
    positions as each of ``lengths`` takes (what the flags ask -> the positions they take), ``tokenizer`` (None:
    the model's) must load, and each target of ``lora`` (``LoraSettings`` or None) must name a layer of the
    model."""
    locate_sources(model, tokenizer)
    from textenv.lora import LoraSettings, check_targets
    from textenv.models import causal_lm_config, check_tokenizer, config_positions
    from textenv.sources import ModelLoadError

    with usage_errors():
        config = causal_lm_config(model)
    if model is not None or tokenizer is not None:  # (the default LM's own is known to load)
        try:
            check_tokenizer(tokenizer if tokenizer is not None else model)
        except ModelLoadError as err:
            raise UsageError(f"--{'tokenizer' if tokenizer is not None else 'model'}: {err}") from err
    positions = config_positions(config)
    for asked, tokens in (lengths or {}).items():
        if positions is not None and tokens > positions:
            raise UsageError(f"{asked} takes {tokens} positions, but the model ({config.model_type}) reads at most "
                             f"{positions} tokens, prompt and response together")
    if lora is not None:
        with usage_errors():
            check_targets(config, lora if isinstance(lora, LoraSettings) else LoraSettings(**lora))


def locate_sources(model: str | None, tokenizer: str | None) -> None:
    """``--model`` and ``--tokenizer`` exist (a directory here, a hub id in the cache or reachable): a mistyped path
    fails at once, before seconds of imports and a minute of hub retries (``textenv.sources.locate``)."""
    from textenv.sources import ModelLoadError, locate

    for what, value in (("model", model), ("tokenizer", tokenizer)):
        if value is not None:
            try:
                locate(value, what)
            except ModelLoadError as err:
                raise UsageError(f"--{what}: {err}") from err


def check_files(prompts: Any = None, preferences: Any = None, demonstrations: Any = None) -> None:
    """Read each file given (or dataset directory) as the run will, down to its records: bytes that are not UTF-8,
    bad or too deeply nested JSON, a missing file, an empty prompt file fail here, naming the file and line. The
    records' fields are checked by the run, which needs the tokenizer for conversations."""
    from rewardmodels.text.preferences import TextPreferenceError, iter_records
    from textenv.prompts import PromptError, read_prompts

    with usage_errors(PromptError, TextPreferenceError, FileNotFoundError):
        if prompts is not None:
            read_prompts(prompts)
        for source in (preferences, demonstrations):
            if source is not None:
                for _ in iter_records(source):
                    pass
