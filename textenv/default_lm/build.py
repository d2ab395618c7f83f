"""Rebuild the offline default LM: generate the review corpus, train a word-level tokenizer and a tiny GPT-2, save both
in Hugging Face format.

    python -m textenv.default_lm.build [--out DIR] [--steps N] [--seed S]
    rlhf-gym build-default-lm [--out DIR] [--steps N] [--seed S]

With the defaults it rewrites ``textenv/default_lm/assets``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from textenv.default_lm import default_prompts
from textenv.default_lm.corpus import generate_corpus
from textenv.default_lm.settings import BuildConfig, add_parser
from textenv.files import atomic_directory

logger = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Metaspace marks word starts with this character, so punctuation tokens carry none and decode without a space before
# them: "▁great" "." -> "great." (the SentencePiece convention, Kudo & Richardson 2018).
WORD_START = "\u2581"


def train_tokenizer(texts: list[str], max_length: int):
    """A word-level tokenizer over ``texts``: <pad>=0, <eos>=1, <unk>=2, then words and punctuation marks by frequency.

    Case is kept ("The" and "the" are two tokens). ``decode(encode(text)) == text`` for text with single spaces and no
    space before punctuation, which is how the corpus is written.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(min_frequency=1, special_tokens=[PAD, EOS, UNK]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def make_model(cfg: BuildConfig, tokenizer):
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # A template corpus is easy to fit; within a short training budget dropout only slows learning down.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


def _batch(rows: list[list[int]], pad_id: int, n_positions: int, jitter: float, rng: random.Random):
    """Right-padded (B, T) ids, mask, position ids and labels (-100 on padding) for a list of token-id rows."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.arange(width).repeat(len(rows), 1)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        if rng.random() < jitter:
            pos[i] += rng.randint(0, n_positions - width)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, pos, labels


def _lr_factor(step: int, cfg: BuildConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _mean_loss(model, rows: list[list[int]], pad_id: int, n_positions: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), 128):
        ids, mask, pos, labels = _batch(rows[i : i + 128], pad_id, n_positions, 0.0, random.Random(0))
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss) * n
        count += n
    model.train()
    return total / count


def _encode(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    too_long = sum(len(r) > max_len for r in rows)
    if too_long:
        raise ValueError(f"{too_long} reviews exceed n_positions={max_len} tokens; raise --n-positions")
    return rows


def build(cfg: BuildConfig) -> dict:
    """Generate the corpus, train tokenizer and model, and save them into ``cfg.out``. Returns the build card."""
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    texts = generate_corpus(cfg.num_reviews, seed=cfg.seed)
    held_out = generate_corpus(500, seed=cfg.seed + 10_000)
    tokenizer = train_tokenizer(texts, cfg.n_positions)
    train_rows = _encode(tokenizer, texts, cfg.n_positions)
    val_rows = _encode(tokenizer, held_out, cfg.n_positions)
    model = make_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("corpus: %d reviews, vocab %d, model %d parameters", len(texts), len(tokenizer), n_params)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    rng = random.Random(cfg.seed)
    # Batches of reviews of similar length waste little compute on padding: sort once, then each step takes a random
    # window of 4 batches' worth of neighbours and samples a batch from it.
    by_length = sorted(train_rows, key=len)
    window = min(len(by_length), 4 * cfg.batch_size)
    model.train()
    recent: list[float] = []
    for step in range(cfg.steps):
        lo = rng.randrange(len(by_length) - window + 1)
        rows = rng.sample(by_length[lo : lo + window], min(cfg.batch_size, window))
        ids, mask, pos, labels = _batch(rows, tokenizer.pad_token_id, cfg.n_positions, cfg.position_jitter, rng)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        recent = (recent + [float(loss.detach())])[-cfg.log_every :]
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            logger.info("step %d/%d  loss %.3f  (%.0f s)", step + 1, cfg.steps, sum(recent) / len(recent),
                        time.perf_counter() - start)  # fmt: skip
    model.eval()
    card = {
        "architecture": "GPT2LMHeadModel",
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "corpus": "textenv.default_lm.corpus.generate_corpus",
        "corpus_seed": cfg.seed,
        "train_loss": round(sum(recent) / len(recent), 4),
        "held_out_loss": round(_mean_loss(model, val_rows, tokenizer.pad_token_id, cfg.n_positions), 4),
        "build_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": cfg.threads,
        "torch": torch.__version__,
        "config": dataclasses.asdict(cfg) | {"out": None},
    }
    if cfg.eval_samples:
        card["samples"] = sample_report(model, tokenizer, cfg.eval_samples, cfg.max_new_tokens, seed=cfg.seed)
    save(model, tokenizer, Path(cfg.out), card)
    logger.info("saved to %s: held-out loss %.3f, %.0f s", cfg.out, card["held_out_loss"], card["build_seconds"])
    return card


def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, seed: int = 0) -> list[str]:
    """Sample one completion per prompt (temperature 1, full softmax), batched, decoded without special tokens."""
    return _generate(model, tokenizer, prompts, max_new_tokens, seed)[0]


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> tuple[list[str], list[bool]]:
    torch.manual_seed(seed)
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    out = model.generate(
        **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    new = out[:, enc["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
    ended = (new == tokenizer.eos_token_id).any(dim=1).tolist()
    return tokenizer.batch_decode(new, skip_special_tokens=True), ended


def sample_report(model, tokenizer, n: int = 200, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """VADER compound statistics of ``n`` sampled completions of the default training prompts (cycled)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # lazy: only the build's report needs it

    prompts = default_prompts("train")
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    completions, ended = [], []
    for i in range(0, n, 64):
        texts, done = _generate(model, tokenizer, prompts[i : i + 64], max_new_tokens, seed=seed + i)
        completions += texts
        ended += done
    analyzer = SentimentIntensityAnalyzer()
    scores = torch.tensor([analyzer.polarity_scores(c)["compound"] for c in completions], dtype=torch.float64)
    return {
        "n": n,
        "vader_compound_mean": round(float(scores.mean()), 4),
        "vader_compound_std": round(float(scores.std()), 4),
        "fraction_positive": round(float((scores > 0.05).double().mean()), 4),
        "fraction_negative": round(float((scores < -0.05).double().mean()), 4),
        "fraction_ended_with_eos": round(sum(ended) / n, 4),
        "examples": [p + " " + c for p, c in zip(prompts[:6], completions[:6], strict=True)],
    }


def save(model, tokenizer, out: Path, card: dict) -> None:
    """Write model, tokenizer and card into ``out`` as one directory swap, so readers never see a half-written model
    (other processes may be loading the default LM while it is rebuilt)."""
    with atomic_directory(out) as tmp:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.eos_token_id
        # Plain sampling from the full softmax: what the env and the RL agents do.
        model.generation_config.do_sample = True
        model.generation_config.top_k = 0
        model.generation_config.max_new_tokens = card["config"]["max_new_tokens"]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_files(tmp, tokenizer)
        (tmp / "build_info.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(card))
        for path in tmp.iterdir():
            path.chmod(0o644)  # mkdtemp-style private modes would reach the repo
        tmp.chmod(0o755)


def model_card(card: dict) -> str:
    """A short Markdown model card from the build card (``build_info.json``)."""
    cfg = card["config"]
    lines = [
        "# rlhf-gym offline default LM",
        "",
        f"A {card['parameters'] / 1e6:.2f}M-parameter GPT-2 ({cfg['n_layer']} layers, width {cfg['n_embd']}, "
        f"{cfg['n_head']} heads, context {cfg['n_positions']}) with a word-level, case-preserving tokenizer of "
        f"{card['vocab_size']} tokens (`<pad>`=0, `<eos>`=1, `<unk>`=2; prompts padded on the left).",
        "",
        "Trained from scratch on short synthetic reviews (movies, books, gadgets, household products, restaurants; "
        "positive, negative, mixed and neutral) generated by `textenv/default_lm/corpus.py` with seed "
        f"{card['corpus_seed']}: {cfg['num_reviews']} reviews, {cfg['steps']} steps of batch {cfg['batch_size']}. "
        f"Final training loss {card['train_loss']}, held-out loss {card['held_out_loss']} (nats/token); "
        f"built in {card['build_seconds']:.0f} s on {card['torch_threads']} CPU thread(s).",
        "",
        "Rebuild: `python -m textenv.default_lm.build` (or `rlhf-gym build-default-lm`); `--help` lists the settings.",
        "Load: `textenv.default_lm.load_default_lm()` or `AutoModelForCausalLM.from_pretrained(<this folder>)`.",
        "",
        "It is a toy for testing RLHF pipelines offline, not a language model of general English: outside the "
        "review domain it produces nothing useful, and words outside its vocabulary become `<unk>`.",
    ]
    samples = card.get("samples")
    if samples:
        lines += [
            "",
            f"## Samples (temperature 1, {samples['n']} completions of the default training prompts)",
            "",
            f"VADER compound of the completions: mean {samples['vader_compound_mean']:+.3f}, std "
            f"{samples['vader_compound_std']:.3f}; {samples['fraction_positive']:.0%} positive (> 0.05), "
            f"{samples['fraction_negative']:.0%} negative (< -0.05); {samples['fraction_ended_with_eos']:.0%} ended "
            f"with `<eos>` within {cfg.get('max_new_tokens', 48)} tokens.",
            "",
            *[f"- {text}" for text in samples["examples"]],
        ]
    return "\n".join(lines) + "\n"


def _portable_tokenizer_files(folder: Path, tokenizer) -> None:
    """Name the generic fast-tokenizer class and write special_tokens_map.json, so that transformers 4.x loads the
    tokenizer too (5.x saves the class as "TokenizersBackend", which 4.x does not know)."""
    special = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK, "bos_token": EOS}
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(special)
    config.update(tokenizer_class="PreTrainedTokenizerFast", padding_side="left", clean_up_tokenization_spaces=False)
    config["model_max_length"] = tokenizer.model_max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(BuildConfig)}
    build(BuildConfig(**{k: v for k, v in vars(args).items() if k in names}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textenv.default_lm.build", description=__doc__.splitlines()[0])
    add_parser(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
