"""A language-model reward model: a transformer backbone with a scalar head on the last non-pad token.

``LMRewardModel(prompts, responses) -> (B,)`` follows the text reward-function protocol of ``textenv.rewards``, so a
trained model plugs into ``TextGen-v0`` as ``reward_fn``. It is trained on text preference pairs with the pairwise
Bradley-Terry loss (Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022, arXiv:2203.02155), with an optional
margin (Touvron et al. 2023, Llama 2, arXiv:2307.09288, eq. 2) and reward centering (Eisenstein et al. 2023,
"Helping or Herding?", arXiv:2312.09244).

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from rewardmodels.losses import bradley_terry_loss
from rewardmodels.text_preferences import TextPreferencePairs, load_text_preferences
from textenv.distributed import DataParallel, data_parallel
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
    "tokenizers_match",
    "train_reward_model",
]

HEAD_FILE = "reward_head.safetensors"  # the head of encoder backbones, and of every checkpoint before format 2
CONFIG_FILE = "reward_config.json"
FORMAT_VERSION = 2  # 1: backbone + reward_head.safetensors; 2: a Hugging Face sequence-classification checkpoint


class TokenizerMismatchError(ValueError):
    """The reward model's tokenizer differs from the policy's and no explicit mapping was requested."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the step was not applied."""


class RewardCheckpointError(ValueError):
    """A checkpoint cannot be read as a reward model (e.g. a classifier with several labels)."""


def tokenizers_match(a: Any, b: Any) -> bool:
    """True if two tokenizers map text to the same ids: same vocabulary, same special-token ids and, for fast
    tokenizers, the same model (BPE merges, ...), normaliser and pre-tokeniser. Padding settings are ignored."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab():
        return False
    for name in ("eos_token_id", "bos_token_id", "unk_token_id"):
        if getattr(a, name, None) != getattr(b, name, None):
            return False
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is not None and backend_b is not None:
        ja, jb = json.loads(backend_a.to_str()), json.loads(backend_b.to_str())
        return all(ja.get(k) == jb.get(k) for k in ("model", "normalizer", "pre_tokenizer"))
    return True


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
            self.tokenizer.save_pretrained(tmp)
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


def _margins(margin: float | Sequence[float] | None, n: int) -> np.ndarray:
    if margin is None:
        return np.zeros(n, dtype=np.float32)
    arr = np.asarray(margin, dtype=np.float32)
    if arr.ndim == 0:
        arr = np.full(n, float(arr), dtype=np.float32)
    if arr.shape != (n,):
        raise ValueError(f"margin must be a number or one value per pair ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("margins must be finite and >= 0 (how much the chosen reward should exceed the rejected)")
    return arr


def _check_train_args(epochs: int, lr: float, batch_size: int, center_coef: float, max_grad_norm: float | None) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0 (Eisenstein et al. 2023 use 0.01), got {center_coef}")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")


def pairwise_bt_loss(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss with an optional margin, all ``(B,)``.

    For a strict label: ``-log sigmoid(r_chosen - r_rejected - m)`` (Llama 2's margin loss); a tie (0.5) gives
    ``-0.5 log sigmoid(r_a - r_b) - 0.5 log sigmoid(r_b - r_a)`` without margin; NaN labels are ignored. The margin is
    folded into ``r_a`` as ``r_a - m (2y - 1)`` (``2y - 1`` is +1, -1, 0 for a preferred, b preferred, tie), so the
    soft-label cross-entropy :func:`rewardmodels.losses.bradley_terry_loss` does the rest.
    """
    shift = 0.0 if margin is None else margin * (2.0 * labels - 1.0).nan_to_num(0.0)
    loss, metrics = bradley_terry_loss(rewards_a - shift, rewards_b, labels)
    _, unshifted = bradley_terry_loss(rewards_a.detach(), rewards_b.detach(), labels)
    return loss, {**metrics, "accuracy": unshifted["accuracy"]}


class _ScoreIds(nn.Module):
    """``model.score_ids`` as a module's forward, for DDP to wrap (``LMRewardModel.__call__`` is the text
    interface)."""

    def __init__(self, model: LMRewardModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.score_ids(input_ids, attention_mask)


def _batch_loss(
    model: LMRewardModel,
    scorer: nn.Module,
    rows_a: list[list[int]],
    rows_b: list[list[int]],
    labels: torch.Tensor,
    margins: torch.Tensor | None,
    idx: torch.Tensor,
    center_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the pairs ``idx``: both sides in one forward pass of ``scorer`` (the model, or its DDP wrapper),
    BT loss (+ margin) + centering."""
    ids, mask = model.collate([rows_a[i] for i in idx.tolist()] + [rows_b[i] for i in idx.tolist()])
    scores = scorer(ids, mask)  # (2b,)
    r_a, r_b = scores[: len(idx)], scores[len(idx) :]
    loss, metrics = pairwise_bt_loss(r_a, r_b, labels[idx], None if margins is None else margins[idx])
    centering = ((r_a + r_b) ** 2).mean()
    if center_coef:
        loss = loss + center_coef * centering
    return loss, {
        "rm/loss": float(loss.detach()),
        "rm/accuracy": float(metrics["accuracy"]),
        "rm/margin_abs": float(metrics["margin_abs"]),
        "rm/reward_mean_sq": float(centering.detach()),
    }


def _combine_metrics(
    dp: DataParallel, metrics: dict[str, float], n_local: int, device: torch.device
) -> dict[str, float]:
    """The processes' metrics of one global minibatch, each a mean weighted by the pairs it covers: the loss is then
    exactly the combined minibatch's (a non-finite loss in any process makes it non-finite), the accuracy the mean of
    the processes' strict-pair accuracies (a process without a strict pair, NaN, left out)."""
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    is_loss = torch.tensor([key == "rm/loss" for key in metrics], device=device)
    valid = (is_loss | ~values.isnan()).double() * n_local
    values = torch.where(is_loss, values, values.nan_to_num(0.0))
    totals = dp.sum(torch.cat([values * valid, valid]))
    k = len(metrics)
    means = totals[:k] / totals[k:]
    return {key: float(v) for key, v in zip(metrics, means.tolist(), strict=True)}


def train_reward_model(
    model: LMRewardModel,
    pairs: TextPreferencePairs | Any,
    tokenizer: Any = None,
    epochs: int = 1,
    lr: float = 5e-5,
    batch_size: int = 8,
    margin: float | Sequence[float] | None = None,
    center_coef: float = 0.0,
    *,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    eval_pairs: TextPreferencePairs | Any = None,
    log_fn: Callable[[int, dict[str, float]], Any] | None = None,
) -> dict[str, float]:
    """Fit ``model`` to text preference pairs with the pairwise Bradley-Terry loss (AdamW, gradient clipping).

    Loss per batch: :func:`pairwise_bt_loss` ``+ center_coef * mean((r_a + r_b)^2)`` (the reward-centering auxiliary
    loss of Eisenstein et al. 2023, which pins the reward's mean near 0 without changing preferences). Both responses
    of a batch go through the backbone in one forward pass. Skipped pairs (label NaN) are dropped; ties (0.5) train
    the two rewards towards each other.

    Under ``accelerate launch --num_processes N`` (``textenv.distributed``) every process reads the same pairs and
    shuffles them alike, trains on every N-th pair of each minibatch under DDP, and ends with the parameters one
    process gets on the whole minibatches (to float rounding); the logged metrics are the combined minibatch's, in
    every process (log from the main one: ``data_parallel().is_main``).

    Args:
        model: the reward model (trained in place; left in the train/eval mode it had).
        pairs: the training pairs: anything ``rewardmodels.text_preferences.load_text_preferences`` reads (a
            JSONL path, a ``datasets.Dataset``, records in this toolkit's or TRL's standard/conversational formats,
            explicit or implicit prompt, or ``TextPreferencePairs``), read with the model's tokenizer and context.
        tokenizer: must be the model's tokenizer (checked); default ``model.tokenizer``.
        epochs, lr, batch_size: optimisation settings.
        margin: None, one margin for all strict pairs, or one per pair of ``pairs`` (e.g. from rating gaps).
        center_coef: weight of the centering loss (0.01 in Eisenstein et al.).
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clip, or None.
        seed: shuffling seed.
        eval_pairs: held-out pairs (any source, as ``pairs``); their accuracy is reported as ``eval_accuracy``.
        log_fn: called as ``log_fn(step, {"rm/loss": ..., "rm/accuracy": ..., ...})`` after every step
            (``RunDir.log`` fits).

    Returns:
        Final metrics: ``loss`` and ``accuracy`` (means over the last epoch), ``steps``, ``pairs_used``, and
        ``eval_accuracy`` if ``eval_pairs`` was given.

    Raises:
        TokenizerMismatchError: ``tokenizer`` is not the model's tokenizer.
        NonFiniteLossError: the loss became NaN/inf; that step is not applied (weights keep their last finite values).
        ValueError: bad settings, or no labelled pair.
        TextPreferenceError: bad data (``rewardmodels.text_preferences``; the message names the file and line), e.g.
            a prompt that fills the model's whole context.
    """
    _check_train_args(epochs, lr, batch_size, center_coef, max_grad_norm)
    if tokenizer is not None and not tokenizers_match(tokenizer, model.tokenizer):
        raise TokenizerMismatchError(
            "train_reward_model got a tokenizer that differs from the reward model's own; the model can only read "
            "ids from its own tokenizer (leave tokenizer=None to use model.tokenizer)"
        )
    pairs = load_text_preferences(pairs, model.tokenizer, max_length=model.max_length)
    if eval_pairs is not None:
        eval_pairs = load_text_preferences(eval_pairs, model.tokenizer, max_length=model.max_length)
    margins_all = _margins(margin, len(pairs))
    keep = np.flatnonzero(~np.isnan(pairs.labels))
    if keep.size == 0:
        raise ValueError("no labelled pair to train on (all labels are NaN = skipped)")
    data = pairs[keep]
    margins = torch.as_tensor(margins_all[keep], device=model.device) if margin is not None else None
    labels = torch.as_tensor(data.labels, device=model.device)
    rows_a = model.encode(data.prompts, data.responses_a)
    rows_b = model.encode(data.prompts, data.responses_b)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)  # the same order in every process of a data-parallel launch
    dp = data_parallel()
    scorer = dp.wrap(_ScoreIds(model)) if dp.active else model.score_ids
    was_training = model.training
    model.train()
    step, n = 0, len(data)
    history: list[dict[str, float]] = []
    try:
        for _ in range(epochs):
            history = []  # the returned means cover the last epoch
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = torch.as_tensor(order[start : start + batch_size], device=model.device)
                if dp.active:
                    # this process's every world_size-th pair, its loss weighted by its share of the minibatch, so
                    # that DDP's gradient average is the combined minibatch's gradient; a process left without a
                    # pair (minibatch < processes) runs one with weight 0 to take part in the gradient all-reduce
                    local = dp.shard(idx)
                    n_local = len(local)
                    loss, metrics = _batch_loss(model, scorer, rows_a, rows_b, labels, margins,
                                                local if n_local else idx[:1], center_coef)
                    loss = loss * (n_local * dp.world_size / len(idx))
                    metrics = _combine_metrics(dp, metrics, n_local, model.device)
                else:
                    loss, metrics = _batch_loss(model, scorer, rows_a, rows_b, labels, margins, idx, center_coef)
                if not math.isfinite(metrics["rm/loss"]):  # the combined loss: every process stops together
                    raise NonFiniteLossError(
                        f"reward-model loss is {metrics['rm/loss']} at step {step}; the update was not applied. "
                        "Lower lr (or enable max_grad_norm), and check the data for extreme margins."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                step += 1
                history.append(metrics)
                if log_fn is not None:
                    log_fn(step, metrics)
    finally:
        model.train(was_training)
    accs = [m["rm/accuracy"] for m in history if not math.isnan(m["rm/accuracy"])]
    epoch_loss = [m["rm/loss"] for m in history]
    result = {
        "loss": float(np.mean(epoch_loss)),
        "accuracy": float(np.mean(accs)) if accs else float("nan"),
        "steps": float(step),
        "pairs_used": float(n),
    }
    if eval_pairs is not None:
        result["eval_accuracy"] = pairwise_accuracy(model, eval_pairs)
    return result


def pairwise_accuracy(model: Callable[[list[str], list[str]], Any], pairs: TextPreferencePairs | Any) -> float:
    """Fraction of strict pairs (labels 0/1) on which ``model`` scores the preferred response higher (a zero gap
    counts half). ``model`` is any ``(prompts, responses) -> (B,)`` scorer; ``pairs`` any source
    ``load_text_preferences`` reads (conversations rendered with ``model.tokenizer``). NaN if there is no strict
    pair."""
    strict = load_text_preferences(pairs, getattr(model, "tokenizer", None)).strict()
    if len(strict) == 0:
        return float("nan")
    r_c = torch.as_tensor(model(strict.prompts, strict.chosen), dtype=torch.float64).cpu()
    r_r = torch.as_tensor(model(strict.prompts, strict.rejected), dtype=torch.float64).cpu()
    return float(((r_c > r_r).double() + 0.5 * (r_c == r_r).double()).mean())
