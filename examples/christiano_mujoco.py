"""The MuJoCo setup of Christiano et al. 2017 in one call: the ``christiano-mujoco`` preset on a Gymnasium v5 env.

The preset encodes the paper's protocol (1.5 s segments, an ensemble of 3 with disagreement-based queries over 10x
candidates, the 2e6/(T+2e6) label rate, 25% of the comparisons from a random policy, a 2x64 leaky-ReLU predictor
with rewards normalised to std 1, L2 adapted to the validation loss); every value is cited in
``agents/loop/control/presets.py``.
The paper ran millions of steps; the default here is InvertedPendulum-v5 on a budget that finishes on a laptop CPU.

    python examples/christiano_mujoco.py                             # InvertedPendulum-v5, 60 labels, 20k steps
    python examples/christiano_mujoco.py --env Hopper-v5 --labels 700 --steps 1000000 --out runs/hopper
"""

from __future__ import annotations

import argparse

import torch

from agents.loop import PrefsConfig, run_prefs
from agents.rundir import prepare_out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: runs/examples/christiano-ENV)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    config = PrefsConfig.from_preset("christiano-mujoco", args.env, labels=args.labels, steps=args.steps,
                                     seed=args.seed, eval_episodes=args.eval_episodes, progress_bar=False)
    out = args.out or f"runs/examples/christiano-{args.env}"
    # config.json, tb/, checkpoints/, summary.json, curves.png; an earlier run there is moved aside, not appended to
    summary = run_prefs(config, prepare_out(out, overwrite=True))
    print(f"{args.env}: true return {summary['true_return_mean']:.1f} +- {summary['true_return_std']:.1f} from "
          f"{summary['labels_used']} labels ({config.segment_len}-step segments) and {summary['env_steps']} "
          f"env steps in {summary['wall_s']:.0f} s; run directory: {out}")
    return summary


if __name__ == "__main__":
    main()
