"""Supervised fine-tuning (SFT) on demonstrations: the first stage of the classic pipeline (Ouyang et al. 2022,
InstructGPT: SFT -> reward model -> PPO with a KL penalty to the SFT model).

Demonstrations come in TRL's SFT formats (``trl.SFTTrainer``'s dataset formats), as JSON lines, a ``datasets.Dataset``
(or a directory ``Dataset.save_to_disk`` wrote) or a list of records:

* ``{"text": ...}``: language modelling, the loss on every token;
* ``{"prompt": ..., "completion": ...}``: the loss on the completion only (TRL's ``completion_only_loss``, its
  default), the prompt tokenised as the env tokenises prompts, so the policy learns to continue exactly what RL
  will give it; prompt and completion may both be lists of chat messages (conversational prompt-completion);
* ``{"messages": [...]}``: a conversation under the tokenizer's chat template, the loss on every token (TRL's
  default), or with ``assistant_only_loss`` on the last assistant turn only.

The loss is the mean negative log-likelihood over the loss tokens of a minibatch (TRL's token-level mean). Each
example is checked once (a record in no known format, an empty completion, an example longer than ``max_length``:
an error naming the record); nothing is truncated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from agents.llm.offline import OfflineConfig, OfflineTrainer
from agents.llm.rollout import sequence_forward
from rewardmodels.text.preferences import TextPreferenceFileError, iter_records
from textenv.checks import check, check_number
from textenv.prompts import PromptSource, render_chat

__all__ = ["Demonstration", "SFTConfig", "SFTTrainer", "read_demonstrations"]


class Demonstration(NamedTuple):
    """One example as token ids: the context (no loss) and the target (the loss), and where it came from."""

    prompt_ids: list[int]
    target_ids: list[int]
    where: str


@dataclasses.dataclass
class SFTConfig(OfflineConfig):
    """SFT settings (defaults: TRL's ``SFTConfig``, except the batch; and, keyword-only, the optimiser and memory
    settings of :class:`agents.llm.offline.OfflineConfig`)."""

    learning_rate: float = 2e-5
    """Adam learning rate (TRL's default)."""
    epochs: int = 3
    """Passes over the demonstrations (TRL's ``num_train_epochs``)."""
    completion_only_loss: bool = True
    """Prompt-completion records: the loss on the completion only (TRL's default); False trains on the prompt too."""
    assistant_only_loss: bool = False
    """Conversation records: the loss on the last assistant turn only (False: on every token, TRL's default)."""
    max_length: int | None = None
    """Longest example in tokens; None = the model's context. Longer examples are an error, never truncated."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("max_length", self.max_length, low=2, integer=True, none_ok=True)


def read_demonstrations(source: Any, tokenizer: Any, config: SFTConfig | None = None) -> list[Demonstration]:
    """Every record of ``source`` (module docstring) as a :class:`Demonstration`."""
    config = config or SFTConfig()
    out = [_demonstration(rec, where, tokenizer, config) for rec, where in iter_records(source)]
    check(bool(out), "the demonstrations hold no example: give at least one record", TextPreferenceFileError)
    return out


def _demonstration(rec: Any, where: str, tokenizer: Any, cfg: SFTConfig) -> Demonstration:
    if not isinstance(rec, dict):
        raise TextPreferenceFileError(f"{where}: expected a JSON object per record, got {type(rec).__name__}")
    eos = [tokenizer.eos_token_id] if cfg.append_eos and tokenizer.eos_token_id is not None else []
    if "messages" in rec:
        messages = _messages(rec["messages"], where)
        if cfg.assistant_only_loss:
            check(messages[-1]["role"] == "assistant", f"{where}: assistant_only_loss needs a conversation that ends "
                  "with an assistant turn", TextPreferenceFileError)
            prompt = render_chat(messages[:-1], tokenizer, where=where)
            full = render_chat(messages, tokenizer, add_generation_prompt=False, where=where)
            return _split(prompt, full, tokenizer, where, eos=[])  # the template closes the turn itself
        ids = _ids(render_chat(messages, tokenizer, add_generation_prompt=False, where=where), tokenizer, True)
        return _whole(ids, where)
    if "prompt" in rec and "completion" in rec:
        prompt, completion = rec["prompt"], rec["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion
            p, c = _messages(prompt, where), _messages(completion, where, assistant=True)
            text = render_chat(p, tokenizer, where=where)
            return _split(text, render_chat(p + c, tokenizer, add_generation_prompt=False, where=where), tokenizer,
                          where, eos=[], loss_on_prompt=not cfg.completion_only_loss)
        _strings(where, prompt=prompt, completion=completion)
        demo = Demonstration(PromptSource.tokenize([prompt], tokenizer)[0], _ids(completion, tokenizer) + eos, where)
        return demo if cfg.completion_only_loss else _whole(demo.prompt_ids + demo.target_ids, where)
    if "text" in rec:
        _strings(where, text=rec["text"])
        return _whole(_ids(rec["text"], tokenizer, True) + eos, where)
    raise TextPreferenceFileError(f"{where}: no SFT format fits its keys {sorted(rec)}; expected text, prompt and "
                                  "completion, or messages (TRL's SFT formats)")


def _ids(text: str, tokenizer: Any, special: bool = False) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def _whole(ids: list[int], where: str) -> Demonstration:
    """Loss on every token after the first (nothing predicts the first)."""
    check(len(ids) >= 2, f"{where}: the example has fewer than 2 tokens, nothing to learn", TextPreferenceFileError)
    return Demonstration(ids[:1], ids[1:], where)


def _split(prompt: str, full: str, tokenizer: Any, where: str, eos: list[int],
           loss_on_prompt: bool = False) -> Demonstration:
    """A rendered conversation whose text starts with the rendered ``prompt``: the rest is the target."""
    check(full.startswith(prompt), f"{where}: the chat template renders the conversation so that it does not start "
          "with its prompt; give it as text or prompt/completion strings", TextPreferenceFileError)
    prompt_ids, target_ids = _ids(prompt, tokenizer), _ids(full[len(prompt):], tokenizer) + eos
    check(bool(target_ids), f"{where}: the completion is empty", TextPreferenceFileError)
    return _whole(prompt_ids + target_ids, where) if loss_on_prompt else Demonstration(prompt_ids, target_ids, where)


def _messages(value: Any, where: str, assistant: bool = False) -> list[dict[str, str]]:
    ok = isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                     and isinstance(m.get("content"), str) for m in value)
    check(bool(ok), f"{where}: messages must be a non-empty list of {{'role': ..., 'content': ...}} strings",
          TextPreferenceFileError)
    check(not assistant or all(m["role"] == "assistant" for m in value),
          f"{where}: a conversational completion holds assistant turns only", TextPreferenceFileError)
    return list(value)


def _strings(where: str, **fields: Any) -> None:
    for name, value in fields.items():
        check(isinstance(value, str) and bool(value.strip()), f"{where}: {name} must be a non-empty string, got "
              f"{value!r:.60}", TextPreferenceFileError)


class SFTTrainer(OfflineTrainer):
    """SFT on demonstrations (module docstring): ``learn()`` trains ``model`` in place (``model`` keeps its LoRA
    adapters with ``config.lora``); :meth:`heldout_loss` measures the same loss on other demonstrations."""

    algo = "sft"
    unit = "examples"
    uses_reference = False
    config: SFTConfig
    config_class = SFTConfig

    def read_data(self, data: Any) -> int:
        self.examples = data if _are_demonstrations(data) else read_demonstrations(data, self.tokenizer, self.config)
        limit = self.config.max_length or _context(self.model)
        long = [d for d in self.examples if limit is not None and len(d.prompt_ids) + len(d.target_ids) > limit]
        if long:
            raise TextPreferenceFileError(
                f"{long[0].where}: {len(long[0].prompt_ids) + len(long[0].target_ids)} tokens, more than max_length="
                f"{limit} ({len(long)} of {len(self.examples)} examples are): raise max_length, or shorten them; "
                "nothing is truncated")
        return len(self.examples)

    def compute_reference(self) -> None:
        """SFT has no reference."""

    def _nll(self, model: torch.nn.Module, examples: Sequence[Demonstration]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the loss tokens' negative log-likelihoods, their count) of ``examples``."""
        q_ids, q_mask, r_ids, r_mask = _pad(examples, self.tokenizer, self.device)
        logprobs, _, _ = sequence_forward(model, q_ids, q_mask, r_ids, r_mask)
        return -(logprobs * r_mask).sum(), r_mask.sum()

    def batch_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll, count = self._nll(self.train_model, [self.examples[i] for i in rows.tolist()])
        loss = nll / count.clamp(min=1)
        return loss, {"nll": loss.detach(), "tokens": count.float()}

    @torch.no_grad()
    def heldout_loss(self, data: Any, batch_size: int | None = None) -> float:
        """Mean negative log-likelihood per loss token of ``data`` (demonstrations, or any source they are read from)
        under the current model: the measure SFT lowers."""
        examples = data if _are_demonstrations(data) else read_demonstrations(data, self.tokenizer, self.config)
        size = batch_size or self.config.batch_size
        total, count = 0.0, 0.0
        for start in range(0, len(examples), size):
            nll, n = self._nll(self.model, examples[start : start + size])
            total, count = total + float(nll), count + float(n)
        return total / max(count, 1.0)


def _are_demonstrations(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(d, Demonstration) for d in data)


def _context(model: torch.nn.Module) -> int | None:
    from textenv.models import max_positions

    return max_positions(model)


def _pad(examples: Sequence[Demonstration], tokenizer: Any, device: torch.device):
    """Left-padded context ids/mask (B, Lq) and right-padded target ids/mask (B, T), the shapes ``sequence_forward``
    reads (as the env's rollouts: the context right-aligned, the response after it)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lq, lt = max(len(d.prompt_ids) for d in examples), max(len(d.target_ids) for d in examples)
    q_ids = torch.full((len(examples), lq), pad, dtype=torch.long)
    q_mask = torch.zeros(len(examples), lq, dtype=torch.bool)
    t_ids = torch.full((len(examples), lt), pad, dtype=torch.long)
    t_mask = torch.zeros(len(examples), lt, dtype=torch.bool)
    for i, d in enumerate(examples):
        q_ids[i, lq - len(d.prompt_ids):] = torch.tensor(d.prompt_ids)
        q_mask[i, lq - len(d.prompt_ids):] = True
        t_ids[i, : len(d.target_ids)] = torch.tensor(d.target_ids)
        t_mask[i, : len(d.target_ids)] = True
    return q_ids.to(device), q_mask.to(device), t_ids.to(device), t_mask.to(device)
