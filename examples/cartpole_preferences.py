"""Deep RL from human preferences (Christiano et al. 2017) on CartPole-v1, with a simulated teacher.

The agent (SB3 PPO) never sees the env's reward: a scripted teacher compares pairs of 50-step segments by their
true return, a Bradley-Terry ensemble is fitted to those labels, and the agent trains on the learned reward. The
true return of the final policy is what the run reports. The same as ``rlhf-gym prefs``, from Python, with a
mistake-prone teacher (10% of labels flipped) to show the noise models.

    python examples/cartpole_preferences.py                     # 100 labels, 30k steps: about 2 minutes on 2 cores
    python examples/cartpole_preferences.py --labels 40 --steps 6000 --out runs/examples/cartpole-tiny
"""

from __future__ import annotations

import argparse

import torch

from agents.loop import PrefsConfig, run_prefs
from agents.rundir import prepare_out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=None, help="default: the CartPole preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/cartpole")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny MLPs: one thread is fastest on a small CPU

    config = PrefsConfig.for_env(
        "CartPole-v1", labels=args.labels, steps=args.steps, rounds=args.rounds, seed=args.seed,
        teacher="mistake", teacher_params={"eps": 0.1}, progress_bar=False,
    )
    # writes config.json, tb/, checkpoints/, summary.json, curves.png; an earlier run there is moved aside
    summary = run_prefs(config, prepare_out(args.out, overwrite=True))
    print(f"true return {summary['true_return_mean']:.1f} +- {summary['true_return_std']:.1f} "
          f"(500 is the maximum) from {summary['labels_used']} labels and {summary['env_steps']} env steps "
          f"in {summary['wall_s']:.0f} s; run directory: {args.out}")
    return summary


if __name__ == "__main__":
    main()
