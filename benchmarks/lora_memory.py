"""Peak memory and learning signal of GRPO with LoRA against full fine-tuning (with its copied reference), on a
GPT-2-small-sized random model, each variant in its own process, measured in one run.

Both variants run the same GRPO (``agents.llm.grpo``) on the same random GPT-2 (12 layers, hidden 768: ~85M
parameters with the small vocabulary below), same prompts, group size, response length, iterations and seed, on a
toy task (the reward is the fraction of response words equal to "good"). Full fine-tuning trains every weight with
Adam against a frozen deep copy of the initial model (the agent's default reference); LoRA (``lora=``) trains rank-r
adapters on the attention projections against the same base with the adapters disabled (no copy). The env is built
with ``kl_coef=0``, so both agents score their reference in one batched forward per rollout.

Reported per variant: peak resident memory of the process (``ru_maxrss``), its growth over the process's memory after
the imports (what the model, reference, optimizer and activations take), the trainable parameters, and the mean
training reward of the first and the last iterations. On CUDA the torch allocator's peak is reported too.

    python benchmarks/lora_memory.py                        # 12 x 768, 12 iterations, both variants
    python benchmarks/lora_memory.py --layers 2 --hidden 64 --iterations 30   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad", "the", "movie", "was", "fine", "plot", "is"]
PROMPTS = ["the movie was", "the plot is", "the movie is", "the plot was"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from transformers import GPT2Config, GPT2LMHeadModel

    from agents.llm import GRPOAgent, GRPOConfig
    from textenv import KeywordReward, TextGenVectorEnv
    from textenv.lora import LoraSettings
    from textenv.testing import make_tiny_tokenizer

    baseline = _rss_mb()
    tokenizer = make_tiny_tokenizer(WORDS)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_layer=args.layers, n_embd=args.hidden,
                        n_head=max(args.hidden // 64, 1), bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = GPT2LMHeadModel(config).to(device).eval()
    env = TextGenVectorEnv(args.groups * args.group_size, model=model, tokenizer=tokenizer, prompts=PROMPTS,
                           reward_fn=KeywordReward(["good"], normalize=True), kl_coef=0.0,
                           max_new_tokens=args.tokens, max_prompt_tokens=4, array_backend="torch", device=device)
    lora = LoraSettings(r=args.rank, alpha=2 * args.rank) if args.variant == "lora" else None
    lr = args.lora_lr if lora is not None else args.full_lr
    agent = GRPOAgent(env, GRPOConfig(group_size=args.group_size, prompts_per_step=args.groups, learning_rate=lr,
                                      beta=0.04, seed=args.seed, lora=lora))
    scores: list[float] = []
    start = time.perf_counter()
    agent.learn(args.iterations, callback=lambda _a, _i, m: scores.append(m["env/score_mean"]))
    k = max(args.iterations // 4, 1)
    out = {
        "variant": args.variant,
        "params_total": sum(p.numel() for p in agent.policy.parameters()),
        "params_trainable": sum(p.numel() for p in agent.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mb": baseline,
        "score_first": sum(scores[:k]) / k,
        "score_last": sum(scores[-k:]) / k,
        "seconds": time.perf_counter() - start,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["full", "lora"], help="run one variant here (the parent runs both)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--lora-lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return
    rows = []
    passthrough = [a for a in sys.argv[1:] if a not in ("--out",)]
    if args.out is not None:
        i = passthrough.index(str(args.out)) if str(args.out) in passthrough else None
        passthrough = [a for j, a in enumerate(passthrough) if j != i]
    for variant in ("full", "lora"):  # a fresh process each: ru_maxrss is a process-lifetime peak
        done = subprocess.run([sys.executable, __file__, "--variant", variant, *passthrough], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    full, lora = rows
    print(f"GPT-2 {args.layers} layers x {args.hidden}, {args.groups}x{args.group_size} rows x {args.tokens} tokens, "
          f"{args.iterations} GRPO iterations, {args.threads} thread(s)")
    print("| variant | params (trainable / total) | peak RSS MB | growth over imports MB | score first -> last | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['params_trainable']:,} / {r['params_total']:,} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | {r['score_first']:.3f} -> {r['score_last']:.3f} | "
              f"{r['seconds']:.0f} |")
    grow = (lora["peak_rss_mb"] - lora["baseline_rss_mb"]) / (full["peak_rss_mb"] - full["baseline_rss_mb"])
    print(f"LoRA / full: peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, growth {grow:.2f}x"
          + (f", CUDA peak {lora['cuda_peak_mb'] / full['cuda_peak_mb']:.2f}x" if "cuda_peak_mb" in full else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
