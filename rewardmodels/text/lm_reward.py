"""A language-model reward model: a transformer backbone with a scalar head on the last non-pad token.

``LMRewardModel(prompts, responses) -> (B,)`` follows the text reward-function protocol of ``textenv.rewards``, so a
trained model plugs into ``TextGen-v0`` as ``reward_fn``. It is trained on text preference pairs with the pairwise
Bradley-Terry loss (Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022, arXiv:2203.02155), with an optional
margin (Touvron et al. 2023, Llama 2, arXiv:2307.09288, eq. 2) and reward centering (Eisenstein et al. 2023,
"Helping or Herding?", arXiv:2312.09244): ``train_reward_model``, defined in ``rewardmodels.text.training`` and
importable from here.

Portable checkpoints: :meth:`LMRewardModel.save_pretrained` writes a Hugging Face sequence-classification checkpoint
(``config.architectures = ["<Family>ForSequenceClassification"]``, ``num_labels = 1``, ``pad_token_id`` set, the head as
``score.weight``) that ``AutoModelForSequenceClassification.from_pretrained`` loads with the same scores, and
:meth:`LMRewardModel.from_pretrained` loads such checkpoints back, including ones trained by TRL's ``RewardTrainer``.
Both read the score at the rightmost token whose id is not ``pad_token_id``, as Hugging Face does.

Tokenizers: the reward model reads text with its own tokenizer. When it is combined with a policy whose tokenizer is
different, scoring the policy's token ids needs an explicit mapping: ``retokenize=True`` says "decode the policy's
ids to text and re-encode them with my tokenizer". Without it, giving a different ``policy_tokenizer`` raises
:class:`TokenizerMismatchError` at construction.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from rewardmodels.text.common import NonFiniteLossError, TokenizerMismatchError, tokenizers_match
from rewardmodels.text.training import pairwise_accuracy, pairwise_bt_loss, train_reward_model
from textenv.files import atomic_directory
from textenv.lora import LoraSettings, apply_lora, is_peft_model, merged_copy
from textenv.models import load_tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "LMRewardModel",
    "NonFiniteLossError",
    "RewardCheckpointError",
    "TokenizerMismatchError",
    "load_tokenizer",
    "pairwise_accuracy",
    "pairwise_bt_loss",
    "tokenizers_match",
    "train_reward_model",
]

HEAD_FILE = "reward_head.safetensors"  # the head of encoder backbones, and of every checkpoint before format 2
CONFIG_FILE = "reward_config.json"
FORMAT_VERSION = 2  # 1: backbone + reward_head.safetensors; 2: a Hugging Face sequence-classification checkpoint


class RewardCheckpointError(ValueError):
    """A checkpoint cannot be read as a reward model (e.g. a classifier with several labels)."""


def _hidden_size(config: Any) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot find the hidden size of backbone config {type(config).__name__}")


def _max_positions(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


class LMRewardModel(nn.Module):
    """Scalar reward ``r(x, y) = w^T h_last + b`` of a transformer backbone.

    ``h_last`` is the final hidden state at the last non-pad token of ``prompt + response``, so a causal backbone has
    read the whole text there (InstructGPT / Stiennon et al. reward models). Left and right padding give the same score
    (position ids are computed from the attention mask). "Non-pad" means inside the attention mask and not the pad id,
    the rule of Hugging Face's ``*ForSequenceClassification`` (which looks at the ids alone), so that a text ending
    in a pad-valued token (an EOS that doubles as pad) is scored at the same place by both.

    The head is ``w^T h`` in effect: its bias stays frozen at 0, because a Hugging Face ``score`` layer has none (the
    saved checkpoint must score identically) and the Bradley-Terry loss is blind to a shared offset anyway. It exists
    so that value heads initialised from the reward model (``agents.llm.ppo``) have a bias to train.

    Args:
        backbone: a Hugging Face model. A causal LM (``*ForCausalLM``) or any ``*For...`` wrapper is reduced to its
            ``base_model`` (the LM head is dropped); an encoder (``AutoModel``) is used as is. The module is used
            directly, not copied: pass ``copy.deepcopy(policy)`` to initialise a reward model from a policy you keep
            training.
        tokenizer: the backbone's tokenizer (it encodes ``prompt`` and ``response`` as a text pair).
        policy_tokenizer: the policy's tokenizer, to check compatibility (see ``retokenize``).
        retokenize: allow a ``policy_tokenizer`` that differs from ``tokenizer``: policy ids are decoded to text and
            re-encoded (:meth:`score_policy_ids`). Without it, a different tokenizer raises ``TokenizerMismatchError``.
        max_length: longest input in tokens; longer texts keep their last ``max_length`` tokens (the end of the
            response is what the head reads). Default: the backbone's position limit.
        score_batch_size: batch size of :meth:`__call__`.
        head_init_std: std of the head's normal init; default ``1 / sqrt(hidden + 1)`` ("N implementation details of
            RLHF with PPO", Huang et al. 2024, following the OpenAI lm-human-preferences code).
        lora: train LoRA adapters on the backbone instead of all its weights (``textenv.lora``; Hu et al. 2022);
            the head trains in full. :meth:`save_pretrained` folds the adapters into the saved weights.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        policy_tokenizer: Any = None,
        retokenize: bool = False,
        max_length: int | None = None,
        score_batch_size: int = 32,
        head_init_std: float | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        base = getattr(backbone, "base_model", backbone)
        self.backbone = base if isinstance(base, nn.Module) else backbone
        if lora is not None:  # adapters on the backbone, base frozen; the scalar head trains in full
            self.backbone = apply_lora(self.backbone, lora, task_type="FEATURE_EXTRACTION")
        self.tokenizer = tokenizer
        self.retokenize = bool(retokenize)
        self.policy_tokenizer = policy_tokenizer
        self._same_tokenizer = policy_tokenizer is None or tokenizers_match(tokenizer, policy_tokenizer)
        if not self._same_tokenizer and not self.retokenize:
            raise TokenizerMismatchError(
                "the reward model's tokenizer differs from the policy's tokenizer, so policy token ids mean different "
                "tokens to the reward model. Either use a reward model built on the policy's tokenizer, or pass "
                "retokenize=True to score decoded text with the reward model's own tokenizer."
            )
        config = self.backbone.config
        hidden = _hidden_size(config)
        self.max_length = int(max_length) if max_length is not None else _max_positions(config)
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {score_batch_size}")
        self.score_batch_size = int(score_batch_size)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=head_init_std if head_init_std is not None else 1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        self.head.bias.requires_grad_(False)  # see the class docstring
        self.head.to(device=next(self.backbone.parameters()).device)
        self._takes_positions = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self._pad_id = next(
            (int(v) for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
             if v is not None), 0,
        )

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ------------------------------------------------------------------ scoring
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards of token sequences in the reward model's vocabulary, with gradient.

        Args:
            input_ids: ``(B, L)`` ids, left- or right-padded.
            attention_mask: ``(B, L)`` 1 on real tokens (default: all ones).

        Returns:
            ``(B,)`` float32 rewards read at each row's last non-pad token.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state  # (B, L, H)
        L = input_ids.shape[1]
        # index of the last real token of each row (left or right padding, holes); a pad-valued id does not count,
        # as in Hugging Face's *ForSequenceClassification, so a saved checkpoint reads the same position
        real = attention_mask * (input_ids != self._pad_id)  # (B, L)
        last = (real * torch.arange(L, device=input_ids.device)).argmax(-1)  # (B,)
        h_last = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]  # (B, H)
        return self.head(h_last.to(self.head.weight.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`score_ids` (``nn.Module.__call__`` is taken by the text interface)."""
        return self.score_ids(input_ids, attention_mask)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each ``(prompt, response)`` text pair (the tokenizer's pair template, e.g. ``[CLS] p [SEP] r
        [SEP]`` for BERT, plain concatenation for GPT-2), keeping the last ``max_length`` tokens."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses; they must pair up")
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts), list(responses), add_special_tokens=True)["input_ids"]
        return [row[-self.max_length :] for row in ids]

    def collate(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists into ``(input_ids, attention_mask)`` on the model's device."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:  # type: ignore[override]
        """Rewards of ``responses`` to ``prompts`` as a ``(B,)`` float32 tensor, in eval mode and without gradient
        (the ``reward_fn`` protocol of TextGen-v0). Use :meth:`score_ids` for training."""
        was_training = self.training
        self.eval()
        try:
            rows = self.encode(prompts, responses)
            out = [self.score_ids(*self.collate(rows[i : i + self.score_batch_size]))
                   for i in range(0, len(rows), self.score_batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def score_policy_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of sequences given in the POLICY's vocabulary (``(B, L)`` each; prompt and response together).

        With a matching tokenizer the ids are scored directly (with gradient); with ``retokenize=True`` and a
        different tokenizer each row is decoded with the policy tokenizer and re-encoded with the reward model's.
        """
        if self._same_tokenizer:
            return self.score_ids(input_ids, attention_mask)
        texts = []
        for ids, m in zip(input_ids.tolist(), attention_mask.bool().tolist(), strict=True):
            kept = [t for t, keep in zip(ids, m, strict=True) if keep]
            texts.append(self.policy_tokenizer.decode(kept, skip_special_tokens=True))
        rows = [r[-self.max_length :] for r in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return self.score_ids(*self.collate(rows))

    # ------------------------------------------------------------------ persistence
    def sequence_classifier(self) -> nn.Module | None:
        """The Hugging Face ``*ForSequenceClassification`` model of this backbone's family, sharing this model's
        backbone and head weights (no copy; a LoRA backbone is merged into a copy), with ``num_labels = 1`` and
        ``pad_token_id`` set; None for families whose classifier reads something else than the last token through a
        ``score`` layer (BERT's [CLS] pooler)."""
        backbone = merged_copy(self.backbone) if is_peft_model(self.backbone) else self.backbone  # LoRA: folded in
        config = copy.deepcopy(backbone.config)
        try:
            seq_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        except (KeyError, ValueError):
            return None
        config.num_labels, config.pad_token_id = 1, self._pad_id
        with torch.device("meta"):  # no memory and no random init: every weight is replaced below
            seq = seq_class(config)
        prefix = getattr(seq_class, "base_model_prefix", "")
        score = getattr(seq, "score", None)
        if not prefix or not isinstance(getattr(seq, prefix, None), nn.Module) or not isinstance(score, nn.Linear):
            return None
        setattr(seq, prefix, backbone)
        score.weight = self.head.weight
        if score.bias is not None:
            score.bias = self.head.bias
        return seq

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the reward model as a Hugging Face sequence-classification checkpoint, with the tokenizer and
        ``reward_config.json`` (this class's settings), into directory ``path``.

        ``AutoModelForSequenceClassification.from_pretrained(path)`` loads it and gives the same scores. Encoder
        backbones, whose HF classifiers pool differently, are saved as backbone + ``reward_head.safetensors`` (loadable
        by :meth:`from_pretrained` only). The directory is written next to its destination and swapped in at the end
        (``textenv.files.atomic_directory``), so an interrupted save leaves the previous checkpoint intact.
        """
        seq = self.sequence_classifier()
        bias = float(self.head.bias.detach().abs().max())
        if seq is not None and getattr(seq.score, "bias", None) is None and bias != 0.0:
            logger.warning("the reward head's bias (%g) was changed from 0; a Hugging Face score layer has none, so "
                           "the saved checkpoint's scores are shifted by -bias (preferences are unchanged)", bias)
        with atomic_directory(path) as tmp:
            if seq is not None:
                seq.save_pretrained(tmp)
            else:
                logger.warning("%s has no last-token sequence classifier in transformers; saving backbone + %s, "
                               "which only LMRewardModel.from_pretrained reads",
                               type(self.backbone).__name__, HEAD_FILE)
                self.backbone.save_pretrained(tmp)
                head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
                save_file(head, str(tmp / HEAD_FILE))
            # Right padding: Hugging Face classifiers and pipeline("text-classification") take position ids from
            # 0 whatever the padding, so a left-padded batch shifts every position and changes the scores.
            tokenizer = copy.copy(self.tokenizer)
            tokenizer.padding_side = "right"
            tokenizer.save_pretrained(tmp)
            settings = {"format_version": FORMAT_VERSION, "max_length": self.max_length,
                        "score_batch_size": self.score_batch_size}
            (tmp / CONFIG_FILE).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        policy_tokenizer: Any = None,
        retokenize: bool = False,
        **kwargs: Any,
    ) -> LMRewardModel:
        """Load a reward model: a Hugging Face sequence-classification checkpoint (what :meth:`save_pretrained`
        writes, or TRL's ``RewardTrainer``: ``num_labels = 1``, a ``score`` head), a checkpoint of the earlier layout
        (backbone + ``reward_head.safetensors``), or any other Hugging Face model directory or hub id (then the head is
        freshly initialised; an LM head in the checkpoint is ignored). The result is a ``reward_fn`` for TextGen-v0.

        Raises:
            RewardCheckpointError: a classifier with ``num_labels != 1``, or one that does not score the last token.
        """
        path_str = os.fspath(path)
        tokenizer = load_tokenizer(path_str)
        settings: dict[str, Any] = {}
        config_file = Path(path_str) / CONFIG_FILE
        if config_file.is_file():
            settings = json.loads(config_file.read_text())
        settings.pop("format_version", None)
        settings.update(kwargs)
        options = {"policy_tokenizer": policy_tokenizer, "retokenize": retokenize, **settings}
        architectures = getattr(AutoConfig.from_pretrained(path_str), "architectures", None) or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            model = cls._from_sequence_classifier(path_str, tokenizer, options)
        else:
            model = cls(AutoModel.from_pretrained(path_str), tokenizer, **options)
            head_file = Path(path_str) / HEAD_FILE
            if head_file.is_file():
                model.head.load_state_dict(load_file(str(head_file)))  # copies values: the bias stays frozen
            else:
                logger.info("no %s in %s: the reward head is freshly initialised", HEAD_FILE, path_str)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def _from_sequence_classifier(cls, path: str, tokenizer: Any, options: dict[str, Any]) -> LMRewardModel:
        seq = AutoModelForSequenceClassification.from_pretrained(path)
        if seq.config.num_labels != 1:
            raise RewardCheckpointError(
                f"{path} is a {type(seq).__name__} with num_labels={seq.config.num_labels}; a reward model has one "
                "output (num_labels=1, as TRL's RewardTrainer trains). Load a reward-model checkpoint instead."
            )
        score = getattr(seq, "score", None)
        if not isinstance(score, nn.Linear):
            raise RewardCheckpointError(
                f"{path} is a {type(seq).__name__}, which has no last-token 'score' head (its classifier pools "
                "differently); LMRewardModel reads decoder models' sequence-classification checkpoints. To start a "
                "reward model from this backbone, load it with AutoModel and pass it to LMRewardModel."
            )
        model = cls(getattr(seq, seq.base_model_prefix), tokenizer, **options)
        with torch.no_grad():
            model.head.weight.copy_(score.weight)
            if score.bias is not None:
                model.head.bias.copy_(score.bias)
        if seq.config.pad_token_id is not None:  # the position HF reads is set by the checkpoint's pad id
            model._pad_id = int(seq.config.pad_token_id)
        return model


# ---------------------------------------------------------------------- training
