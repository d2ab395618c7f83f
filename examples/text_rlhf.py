"""RLHF for an LM, end to end and offline: preference pairs -> LM reward model -> GRPO / PPO / RLOO / DPO.

On the default LM (a tiny GPT-2 that writes short reviews): sample completion pairs of training prompts, label them
with a sentiment teacher (VADER, standing in for a person), fit a Bradley-Terry reward model with a scalar head on
the LM, then improve the policy on ``TextGen-v0`` with the KL penalty to the initial model (DPO trains on the pairs
directly). Prints the teacher's score on held-out prompts before and after, the KL to the reference and a few
samples. With ``--rounds R`` the labels are spread over R rounds of the same preference loop, each asked on the
current policy's completions. The same as ``rlhf-gym text --algo ALGO``, from Python, with a smaller budget.

    python examples/text_rlhf.py                         # GRPO, 15 iterations: a couple of minutes on 2 cores
    python examples/text_rlhf.py --rounds 3              # online: labels asked on the current policy, 3 rounds
    python examples/text_rlhf.py --algo dpo --pairs 256
    python examples/text_rlhf.py --algo ppo --iterations 2 --pairs 32 --out runs/examples/text-tiny
"""

from __future__ import annotations

import argparse

import torch

from agents.loop.text.algorithms import TEXT_ALGORITHMS
from agents.loop.text.run import TextRLHFConfig, print_samples, run_text_rlhf
from agents.rundir import prepare_out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="grpo", choices=sorted(TEXT_ALGORITHMS))
    parser.add_argument("--iterations", type=int, default=15, help="RL iterations (DPO: epochs over the pairs)")
    parser.add_argument("--pairs", type=int, default=128, help="labelled completion pairs")
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="label -> fit -> improve rounds (1 = offline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: runs/examples/text-ALGO)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the default LM is tiny: more threads only contend on a small CPU

    offline = TEXT_ALGORITHMS[args.algo].offline  # DPO / KTO: iterations are epochs over the pairs
    iterations = max(args.rounds, min(args.iterations, 2)) if offline else args.iterations
    config = TextRLHFConfig.for_algo(args.algo, seed=args.seed, iterations=iterations, num_pairs=args.pairs,
                                     eval_prompts=args.eval_prompts, rounds=args.rounds)
    result = run_text_rlhf(config, prepare_out(args.out or f"runs/examples/text-{args.algo}", overwrite=True))
    s = result.summary
    print(f"{args.algo}, {args.rounds} round(s): teacher score {s['oracle_score_before']:+.3f} -> "
          f"{s['oracle_score_after']:+.3f}, KL to reference {s['kl_to_ref']:.3f}, win rate vs the initial model "
          f"{s['win_rate_vs_ref']:.2f}, {s['labels_used']} labels, {s['wall_s']:.0f} s; run directory: "
          f"{result.run_dir.path}")
    print_samples(result, n=3)
    return s


if __name__ == "__main__":
    main()
