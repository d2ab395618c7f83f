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
default LM if it is installed, else a randomly initialised GPT-2 of the same size; ``--model gpt2-small`` (or
``small``) takes a randomly initialised GPT-2-small-sized model (12 layers, hidden 768; 124M parameters as a GPT-2),
``--model tiny`` one with 2 layers and hidden 64. ``--family`` picks the architecture of the random models: ``gpt2``
(default), or one of the Llama family (``llama``, ``qwen2``, ``qwen3``, ``mistral``; grouped-query attention with
half as many K/V heads as query heads at ``tiny``, SwiGLU MLP), each served by its ``textenv.decoders`` entry.

Usage::

    python benchmarks/rollout_vs_generate.py --batch 64 --tokens 64 --repeats 5 --device cpu
    python benchmarks/rollout_vs_generate.py --family qwen2 --model tiny --batch 32 --tokens 32
    python benchmarks/rollout_vs_generate.py --device cuda --model gpt2-small
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from textenv import sample_tokens

#: --model name -> (layers, hidden, heads) of the random models
SIZES = {"tiny": (2, 64, 4), "default-size": (3, 128, 4), "small": (12, 768, 12), "0.5b": (24, 896, 14)}
#: The rest of Qwen2-0.5B's shape (its config.json), for ``--family qwen2 --model 0.5b``: 494M parameters, random.
QWEN2_0_5B = {"num_key_value_heads": 2, "intermediate_size": 4864, "tie_word_embeddings": True, "vocab": 151_936}


def load_model(device: str, which: str = "default", family: str = "gpt2"):
    """The default LM and its prompts (else a same-size random GPT-2), or a random model of ``family`` and size
    ``which`` (``SIZES``). The random models use a word-level tokenizer over made-up words, so prompts are random
    word strings."""
    if which == "default" and family == "gpt2":
        try:
            from textenv.default_lm import default_prompts, load_default_lm

            model, tok = load_default_lm(device=device)
            return model, tok, default_prompts(), "default LM"
        except (ImportError, FileNotFoundError, OSError):
            pass
    which = {"gpt2-small": "small", "default": "default-size"}.get(which, which)
    layers, hidden, heads = SIZES[which]
    if which == "0.5b" and family == "gpt2":
        raise SystemExit("--model 0.5b is a Qwen2-0.5B-shaped model: use it with --family qwen2 (or llama, ...)")
    n_words = {"small": 50254, "0.5b": QWEN2_0_5B["vocab"] - 3}.get(which, 1000)  # minus the special tokens
    words = [f"w{i}" for i in range(n_words)]
    if family == "gpt2":
        from textenv.testing import make_tiny_lm

        model, tok = make_tiny_lm(words, device=device, n_layer=layers, n_head=heads, n_embd=hidden, n_positions=1024)
    else:
        shape = {k: v for k, v in QWEN2_0_5B.items() if k != "vocab"} if which == "0.5b" else {}
        model, tok = make_family_lm(family, words, layers, hidden, heads, device, **shape)
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(200)]
    return model, tok, prompts, f"random {family} ({layers} layers x {hidden}, {which})"


def make_family_lm(family: str, words: list[str], layers: int, hidden: int, heads: int, device: str, **shape):
    """A randomly initialised Llama-family causal LM: GQA with half the heads as K/V heads below 12 heads (full
    multi-head attention at GPT-2-small size, for a like-for-like comparison), an MLP of 8/3 the hidden size (the
    Llama ratio, which keeps a SwiGLU MLP near a GPT-2 MLP's parameter count), RoPE, RMSNorm, untied head; ``shape``
    overrides those config fields (e.g. Qwen2-0.5B's)."""
    import transformers

    from textenv.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer(words)
    name = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
    config_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForCausalLM")
    extra = {"sliding_window": None} if family == "mistral" else {}
    fields = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=(8 * hidden // 3 + 7) // 8 * 8,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads if heads >= 12 else heads // 2,
        head_dim=hidden // heads, max_position_embeddings=1024, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )  # fmt: skip
    config = config_cls(**{**fields, **extra, **shape})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok


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


def env_play(env, prompts: list[str], eos: int, gen: torch.Generator, fast: bool = False) -> int:
    env.reset(seed=0, options={"prompts": prompts})
    episodes = env.play(gen, lambda logits, g: sample(logits, eos, g, fast=fast))
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
        "--model", choices=["default", "tiny", "small", "gpt2-small", "0.5b"], default="default",
        help="tiny: 2 layers x 64; small / gpt2-small: 12 layers x 768 (GPT-2-small-sized); 0.5b: Qwen2-0.5B-shaped "
             "(24 x 896, GQA 14/2, vocab 151,936; with --family qwen2); default: the default LM",
    )  # fmt: skip
    parser.add_argument(
        "--family", choices=["gpt2", "llama", "qwen2", "qwen3", "mistral"], default="gpt2",
        help="architecture of the random model",
    )  # fmt: skip
    parser.add_argument(
        "--no-fast-decode", action="store_true",
        help="run the env through the model's own forward (the state before textenv.decoders served the model)",
    )  # fmt: skip
    parser.add_argument(
        "--headline", nargs="?", const="step", choices=["step", "play"], default=None,
        help="only the cases of the two headline ratios and their fast-sampler rows, with the env driven by step() "
             "(default) or play() (for large models on a slow machine)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from textenv import SentimentReward, TextGenVectorEnv, TokenCountReward
    from textenv.models import frozen_copy

    model, tok, all_prompts, what = load_model(args.device, args.model, args.family)
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
    for env in (env_sample, env_full):
        env.engine.fast_decode = not args.no_fast_decode
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
        "env.play(): sampling only, fast": lambda: env_play(env_sample, prompts, eos, gen, fast=True),
        "env.play(): full rollout, fast": lambda: env_play(env_full, prompts, eos, gen, fast=True),
        "TRL pipeline: full rollout": lambda: generate_rollout(
            model, tok, prompts, args.tokens, args.temperature, ref=ref, reward_fn=reward_fn
        ),
    }
    if args.headline:
        env = "env" if args.headline == "step" else "env.play()"
        keep = (f"{env}: sampling only", "generate: sampling only", f"{env}: full rollout",
                "TRL pipeline: full rollout", f"{env}: sampling only, fast", f"{env}: full rollout, fast")
        cases = {k: cases[k] for k in keep}
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

    served = {type(d).__name__ if d is not None else "the model's forward" for d in env_full.engine.decoders.values()}
    print(f"model: {what}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {len(tok)}")
    print(f"env decoding step: {', '.join(sorted(served))}")
    print(
        f"batch {args.batch}, {args.tokens} new tokens, prompts <= {max_prompt} tokens, device {args.device}, "
        f"threads {args.threads}, temperature {args.temperature}, reward {args.reward}, "
        f"median of {args.repeats} repeats"
    )
    print(f"| {'case':<33} | {'tokens/s (wall)':>15} | {'tokens/s (CPU)':>14} | {'median wall s':>13} |")
    print(f"|{'-' * 35}|{'-' * 17}|{'-' * 16}|{'-' * 15}|")
    for name in cases:
        print(
            f"| {name:<33} | {tps_wall[name]:>15.0f} | {tps_cpu[name]:>14.0f} | "
            f"{statistics.median(wall[name]):>13.3f} |"
        )
    pairs = {
        "sampling only (env / generate), target >= 1.0": ("env: sampling only", "generate: sampling only"),
        "full rollout (env / TRL pipeline), target >= 0.75": ("env: full rollout", "TRL pipeline: full rollout"),
        "sampling only, fast sampler (env / generate)": ("env: sampling only, fast", "generate: sampling only"),
        "full rollout, fast sampler (env / TRL pipeline)": ("env: full rollout, fast", "TRL pipeline: full rollout"),
        "sampling only, env.play() (env / generate)": ("env.play(): sampling only", "generate: sampling only"),
        "full rollout, env.play() (env / TRL pipeline)": ("env.play(): full rollout", "TRL pipeline: full rollout"),
        "sampling only, env.play(), fast sampler (env / generate)": (
            "env.play(): sampling only, fast", "generate: sampling only"),
        "full rollout, env.play(), fast sampler (env / TRL pipeline)": (
            "env.play(): full rollout, fast", "TRL pipeline: full rollout"),
    }
    ratios = {}
    gpu = args.device.startswith("cuda")
    print()
    for label, (ours, theirs) in pairs.items():
        if ours not in cases:
            continue
        cpu_ratio, wall_ratio = tps_cpu[ours] / tps_cpu[theirs], tps_wall[ours] / tps_wall[theirs]
        ratios[label] = wall_ratio if gpu else cpu_ratio
        if gpu:
            print(f"ratio {label}: {wall_ratio:.2f} (wall-clock)")
        else:
            print(f"ratio {label}: {cpu_ratio:.2f} (CPU time), {wall_ratio:.2f} (wall-clock)")
    return ratios


if __name__ == "__main__":
    main()
