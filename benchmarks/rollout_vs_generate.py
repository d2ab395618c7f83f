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

Both sides sample from the same distribution (temperature, no top-k/top-p: what RLHF needs, and what TRL sets) and
suppress EOS so that every row produces exactly ``--tokens`` tokens (``min_new_tokens`` for ``generate``, the same
mask on the env's logits). The headline ratios use generate's own sampler on both sides (softmax +
``torch.multinomial``), so they measure the env's cost alone; the "fast" rows let the native loop use
``textenv.sample_tokens`` (exact inverse-CDF sampling, one uniform per row), and the ``env.play()`` rows play the
whole episodes in one call (what the native agents do; generate's sampler).
Each timed repeat includes the episode start (env reset / generate's prefill). Ratios are computed from the median
process CPU time (with one torch thread, robust to other processes on a shared machine); wall-clock ratios are
printed beside them (on a GPU, wall-clock after ``torch.cuda.synchronize`` is the measure). The model is the offline
default LM if it is installed, else a randomly initialised GPT-2 of the same size; ``--model gpt2-small`` takes a
randomly initialised GPT-2-small (124M parameters, for GPU runs).

Usage::

    python benchmarks/rollout_vs_generate.py --batch 64 --tokens 64 --repeats 5 --device cpu
    python benchmarks/rollout_vs_generate.py --device cuda --model gpt2-small
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from textenv import sample_tokens


def load_model(device: str, which: str = "default"):
    """The default LM and its prompts (else a same-size random GPT-2), or a random GPT-2-small (124M) for GPUs.
    The random models use a word-level tokenizer over made-up words, so prompts are random word strings."""
    if which == "default":
        try:
            from textenv.default_lm import default_prompts, load_default_lm

            model, tok = load_default_lm(device=device)
            return model, tok, default_prompts(), "default LM"
        except (ImportError, FileNotFoundError, OSError):
            which = "default-size"
    from textenv.testing import make_tiny_lm

    small = which == "gpt2-small"
    words = [f"w{i}" for i in range(50254 if small else 1000)]
    size = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024) if small else dict(n_layer=3, n_head=4, n_embd=128)
    model, tok = make_tiny_lm(words, device=device, **{"n_positions": 128, **size})
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(200)]
    return model, tok, prompts, "random GPT-2-small (12x768)" if small else "random GPT-2 (3x128, default LM size)"


def sample(logits: torch.Tensor, eos: int, gen: torch.Generator, fast: bool) -> torch.Tensor:
    # EOS masked out of place, as generate's MinNewTokensLogitsProcessor does; then generate's own sampler
    # (softmax + torch.multinomial) or the toolkit's inverse-CDF sampler (same distribution, one uniform per row).
    logits = logits.index_fill(1, torch.tensor([eos], device=logits.device), -float("inf"))
    if fast:
        return sample_tokens(logits, gen)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)


def env_rollout(env, prompts: list[str], tokens: int, eos: int, gen: torch.Generator, fast: bool = False) -> int:
    env.reset(seed=0, options={"prompts": prompts})
    n = 0
    for _ in range(tokens):
        actions = sample(env.next_token_logits(), eos, gen, fast)
        _, reward, terminated, truncated, info = env.step(actions)
        n += actions.numel()
    assert bool(truncated.all()), "every row must reach max_new_tokens (EOS is suppressed)"
    return n


def env_play(env, prompts: list[str], eos: int, gen: torch.Generator) -> int:
    env.reset(seed=0, options={"prompts": prompts})
    episodes = env.play(gen, lambda logits, g: sample(logits, eos, g, fast=False))
    assert not episodes.terminated.any(), "every row must reach max_new_tokens (EOS is suppressed)"
    return int(episodes.mask.sum())


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


def timed(fn, device: str) -> tuple[float, float, int]:
    """Wall-clock and process CPU seconds of ``fn()``, and its token count. On CPU with one torch thread the CPU time
    is the robust measure on a shared machine (other processes inflate wall time, not our CPU time); on a GPU only
    wall-clock (after a synchronize) means anything."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    sync()
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
    parser.add_argument(
        "--model", choices=["default", "gpt2-small"], default="default", help="gpt2-small: random 124M (for GPUs)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from textenv import SentimentReward, TextGenVectorEnv, TokenCountReward
    from textenv.models import frozen_copy

    model, tok, all_prompts, what = load_model(args.device, args.model)
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
        "env: sampling only, fast": lambda: env_rollout(env_sample, prompts, args.tokens, eos, gen, fast=True),
        "generate: sampling only": lambda: generate_rollout(model, tok, prompts, args.tokens, args.temperature),
        "env: full rollout": lambda: env_rollout(env_full, prompts, args.tokens, eos, gen),
        "env: full rollout, fast": lambda: env_rollout(env_full, prompts, args.tokens, eos, gen, fast=True),
        "env.play(): sampling only": lambda: env_play(env_sample, prompts, eos, gen),
        "env.play(): full rollout": lambda: env_play(env_full, prompts, eos, gen),
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
            dw, dc, tokens[name] = timed(fn, args.device)
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
    print(f"| {'case':<29} | {'tokens/s (wall)':>15} | {'tokens/s (CPU)':>14} | {'median wall s':>13} |")
    print(f"|{'-' * 31}|{'-' * 17}|{'-' * 16}|{'-' * 15}|")
    for name in cases:
        print(
            f"| {name:<29} | {tps_wall[name]:>15.0f} | {tps_cpu[name]:>14.0f} | "
            f"{statistics.median(wall[name]):>13.3f} |"
        )
    pairs = {
        "sampling only (env / generate), target >= 1.0": ("env: sampling only", "generate: sampling only"),
        "full rollout (env / TRL pipeline), target >= 0.75": ("env: full rollout", "TRL pipeline: full rollout"),
        "sampling only, fast sampler (env / generate)": ("env: sampling only, fast", "generate: sampling only"),
        "full rollout, fast sampler (env / TRL pipeline)": ("env: full rollout, fast", "TRL pipeline: full rollout"),
        "sampling only, env.play() (env / generate)": ("env.play(): sampling only", "generate: sampling only"),
        "full rollout, env.play() (env / TRL pipeline)": ("env.play(): full rollout", "TRL pipeline: full rollout"),
    }
    ratios = {}
    gpu = args.device.startswith("cuda")
    print()
    for label, (ours, theirs) in pairs.items():
        cpu_ratio, wall_ratio = tps_cpu[ours] / tps_cpu[theirs], tps_wall[ours] / tps_wall[theirs]
        ratios[label] = wall_ratio if gpu else cpu_ratio
        if gpu:
            print(f"ratio {label}: {wall_ratio:.2f} (wall-clock)")
        else:
            print(f"ratio {label}: {cpu_ratio:.2f} (CPU time), {wall_ratio:.2f} (wall-clock)")
    return ratios


if __name__ == "__main__":
    main()
