"""``rlhf-gym text``: offline RLHF on TextGen-v0 with the default LM, end to end.

Sample completion pairs on training prompts -> label them with the sentiment teacher (VADER) -> train an LM reward
model -> improve the policy (PPO / GRPO / RLOO on TextGen-v0 with the KL penalty and the learned reward, or DPO on the
labelled pairs) -> report oracle scores before/after, KL to the reference and the win rate, in ``--out``.

Algorithms come from the registry ``agents.loop.text_rlhf.IMPROVERS`` (name -> improvement step).
"""

from __future__ import annotations

import argparse

import torch

from agents.loop.text_rlhf import IMPROVERS, TextRLHFConfig, print_samples, run_text_rlhf


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, choices=sorted(IMPROVERS), help="how to improve the policy")
    parser.add_argument("--out", required=True, help="run directory (summary.json, curves.png, checkpoints/, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling, labelling and training")
    parser.add_argument("--pairs", type=int, default=None, help="labelled completion pairs (the label budget)")
    parser.add_argument("--iterations", type=int, default=None, help="RL iterations (DPO: epochs over the pairs)")
    parser.add_argument("--lr", type=float, default=None, help="policy learning rate")
    parser.add_argument("--kl-coef", type=float, default=None, help="KL coefficient beta (DPO: its beta)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response length limit")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts used for the oracle score")
    parser.add_argument("--device", default=None, help="torch device (default: cpu, or cuda if available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the default LM is tiny, and more threads mostly contend on small CPUs)",
    )
    parser.add_argument("--samples", type=int, default=3, help="before/after samples to print")


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    overrides = {
        "seed": args.seed,
        "num_pairs": args.pairs,
        "iterations": args.iterations,
        "learning_rate": args.lr,
        "kl_coef": args.kl_coef,
        "max_new_tokens": args.max_new_tokens,
        "eval_prompts": args.eval_prompts,
        "device": args.device,
    }
    config = TextRLHFConfig.for_algo(args.algo, **{k: v for k, v in overrides.items() if v is not None})
    result = run_text_rlhf(config, args.out)
    print_samples(result, n=args.samples)
    s = result.summary
    print(
        f"{args.algo}: oracle score {s['oracle_score_before']:+.3f} -> {s['oracle_score_after']:+.3f}, "
        f"KL to ref {s['kl_to_ref']:.2f}, win rate vs ref {s['win_rate_vs_ref']:.2f}, "
        f"{s['labels_used']} labels, {s['wall_s']:.0f} s -> {args.out}/summary.json"
    )
    return 0
