"""Rollout throughput of TextGen-v0's vector env against ``model.generate`` on the same model, batch and length.

Two ratios of tokens/s, measured side by side in one run (issue 2):

1. sampling only (no reference model, no reward): the native loop on ``TextGenVectorEnv(array_backend="torch")``
   (``logits = env.next_token_logits(); a = sample(logits); env.step(a)``) vs ``model.generate(do_sample=True)``.
   Target >= 1.0.
2. full rollout (policy sampling + reference log-probs + reward): the same loop on an env with a frozen reference
   model and a reward function, vs the pipeline TRL's trainers use: ``generate``, then one batched reference
   forward over the finished sequences (log-probs of the sampled tokens), then the reward call on decoded text.
   Target >= 0.75. (TRL also recomputes the policy's log-probs with a further forward; the env returns them for
   free, but that forward is *not* charged to the TRL side here, which makes the comparison conservative.)

Both sides sample from the same distribution (temperature, no top-k/top-p) with ``torch.multinomial`` and suppress
EOS so that every row produces exactly ``--tokens`` tokens (``min_new_tokens`` for ``generate``, the same mask on the
env's logits). Each timed repeat includes the episode start (env reset / generate's prefill). The model is the
offline default LM if it is installed, else a randomly initialised GPT-2 of the same size.

Usage::

    python benchmarks/rollout_vs_generate.py --batch 64 --tokens 64 --repeats 5 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def load_model(device: str):
    """The default LM and its prompts, or a same-size random GPT-2 with a word-level tokenizer."""
    try:
        from textenv.default_lm import default_prompts, load_default_lm

        model, tok = load_default_lm(device=device)
        return model, tok, default_prompts(), "default LM"
    except (ImportError, FileNotFoundError, OSError):
        from textenv.testing import make_tiny_lm

        words = [f"w{i}" for i in range(1000)]
        model, tok = make_tiny_lm(words, n_layer=3, n_head=4, n_embd=128, n_positions=128, device=device)
        rng = np.random.default_rng(0)
        prompts = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(200)]
        return model, tok, prompts, "random GPT-2 (3x128, default LM size)"


def sample(logits: torch.Tensor, eos: int, gen: torch.Generator) -> torch.Tensor:
    # Same operations as generate's MinNewTokensLogitsProcessor (out-of-place EOS mask) + softmax + multinomial.
    logits = logits.index_fill(1, torch.tensor([eos], device=logits.device), -float("inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)


def env_rollout(env, prompts: list[str], tokens: int, eos: int, gen: torch.Generator) -> int:
    env.reset(seed=0, options={"prompts": prompts})
    n = 0
    for _ in range(tokens):
        actions = sample(env.next_token_logits(), eos, gen)
        _, reward, terminated, truncated, info = env.step(actions)
        n += actions.numel()
    assert bool(truncated.all()), "every row must reach max_new_tokens (EOS is suppressed)"
    return n


@torch.no_grad()
def generate_rollout(model, tok, prompts, tokens, temperature, ref=None, reward_fn=None) -> int:
    enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    out = model.generate(
        **enc,
        do_sample=True,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=tok.pad_token_id,
    )
    p = enc["input_ids"].shape[1]
    assert out.shape[1] - p == tokens
    if ref is not None:  # TRL: one batched reference forward over the finished sequences
        mask = torch.cat([enc["attention_mask"], torch.ones_like(out[:, p:])], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = ref(input_ids=out, attention_mask=mask, position_ids=pos).logits[:, p - 1 : -1].float()
        logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, out[:, p:, None]).squeeze(-1)
        assert logp.shape == (len(prompts), tokens)
    if reward_fn is not None:
        reward_fn(prompts, tok.batch_decode(out[:, p:], skip_special_tokens=True))
    return out[:, p:].numel()


def timed(fn) -> tuple[float, float, int]:
    """Wall-clock and process CPU seconds of ``fn()``, and its token count. With one torch thread the CPU time is
    the robust measure on a shared machine (other processes inflate wall time, not our CPU time)."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - w0, time.process_time() - c0, n


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models lose to contention)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reward", choices=["tokencount", "sentiment"], default="tokencount")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from textenv import SentimentReward, TextGenVectorEnv, TokenCountReward
    from textenv.models import frozen_copy

    model, tok, all_prompts, what = load_model(args.device)
    tok.padding_side = "left"
    rng = np.random.default_rng(0)
    prompts = [all_prompts[i] for i in rng.integers(len(all_prompts), size=args.batch)]
    max_prompt = max(len(x) for x in tok(prompts)["input_ids"])
    eos = tok.eos_token_id
    ref = frozen_copy(model)
    reward_fn = SentimentReward() if args.reward == "sentiment" else TokenCountReward(eos + 1, tok)
    common = dict(
        model=model,
        tokenizer=tok,
        prompts=prompts,
        max_new_tokens=args.tokens,
        max_prompt_tokens=max_prompt,
        temperature=args.temperature,
        device=args.device,
        array_backend="torch",
    )
    env_sample = TextGenVectorEnv(args.batch, ref_model=None, kl_coef=0.0, reward_fn=None, **common)
    env_full = TextGenVectorEnv(args.batch, ref_model=ref, kl_coef=0.05, reward_fn=reward_fn, **common)
    gen = torch.Generator(device=args.device).manual_seed(0)
    torch.manual_seed(0)

    cases = {
        "env: sampling only": lambda: env_rollout(env_sample, prompts, args.tokens, eos, gen),
        "generate: sampling only": lambda: generate_rollout(model, tok, prompts, args.tokens, args.temperature),
        "env: full rollout": lambda: env_rollout(env_full, prompts, args.tokens, eos, gen),
        "TRL pipeline: full rollout": lambda: generate_rollout(
            model, tok, prompts, args.tokens, args.temperature, ref=ref, reward_fn=reward_fn
        ),
    }
    for fn in cases.values():  # warm-up (allocator, lazy inits)
        fn()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so that machine noise hits all cases alike
        for name, fn in cases.items():
            dw, dc, tokens[name] = timed(fn)
            wall[name].append(dw)
            cpu[name].append(dc)
    tps_wall = {k: tokens[k] / statistics.median(v) for k, v in wall.items()}
    tps_cpu = {k: tokens[k] / statistics.median(v) for k, v in cpu.items()}

    print(f"model: {what}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {len(tok)}")
    print(
        f"batch {args.batch}, {args.tokens} new tokens, prompts <= {max_prompt} tokens, device {args.device}, "
        f"threads {args.threads}, temperature {args.temperature}, reward {args.reward}, "
        f"median of {args.repeats} repeats"
    )
    print(f"| {'case':<28} | {'tokens/s (wall)':>15} | {'tokens/s (CPU)':>14} | {'median wall s':>13} |")
    print(f"|{'-' * 30}|{'-' * 17}|{'-' * 16}|{'-' * 15}|")
    for name in cases:
        print(
            f"| {name:<28} | {tps_wall[name]:>15.0f} | {tps_cpu[name]:>14.0f} | "
            f"{statistics.median(wall[name]):>13.3f} |"
        )
    pairs = {
        "sampling only (env / generate), target >= 1.0": ("env: sampling only", "generate: sampling only"),
        "full rollout (env / TRL pipeline), target >= 0.75": ("env: full rollout", "TRL pipeline: full rollout"),
    }
    ratios = {}
    print()
    for label, (ours, theirs) in pairs.items():
        ratios[label] = tps_wall[ours] / tps_wall[theirs]
        print(f"ratio {label}: {ratios[label]:.2f} wall-clock, {tps_cpu[ours] / tps_cpu[theirs]:.2f} CPU time")
    return ratios


if __name__ == "__main__":
    main()
