"""Any Stable-Baselines3 algorithm on text: unmodified SB3 PPO (or A2C) trains the default LM on TextGen-v0.

The policy is ``CausalLMPolicy``: the LM's next-token distribution is the actor, a value head on its last hidden
state the critic. The env's reward is a keyword reward (one point per "wonderful" in the response) plus the per-token
KL penalty to the initial LM, which the env computes by itself: SB3 knows nothing of language models. Writes a run
directory with the SB3 model, TensorBoard logs, summary.json and curves.png.

    python examples/sb3_on_textgen.py                       # PPO, 2048 env steps: about two minutes on 2 cores
    python examples/sb3_on_textgen.py --algo a2c --steps 1024
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

import textenv  # noqa: F401 - registers TextGen-v0
from agents.rundir import RunDir
from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model, mean_episode_score
from textenv import KeywordReward

KEYWORD = "wonderful"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ppo", choices=("ppo", "a2c"))
    parser.add_argument("--steps", type=int, default=2048, help="env steps (= generated tokens)")
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: runs/examples/sb3-ALGO-text)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    run = RunDir(args.out or f"runs/examples/sb3-{args.algo}-text")
    run.write_config(vars(args) | {"keyword": KEYWORD, "kl_coef": 0.02, "max_new_tokens": 12})

    env = gym.make("TextGen-v0", reward_fn=KeywordReward([KEYWORD]), kl_coef=0.02, max_new_tokens=12)
    kwargs = {"n_steps": 256, "batch_size": 64, "n_epochs": 4} if args.algo == "ppo" else {"n_steps": 16}
    model = make_sb3_text_model(args.algo, env, learning_rate=3e-4, gamma=1.0, seed=args.seed,
                                tensorboard_log=str(run.path / "tb"), **kwargs)
    before = mean_episode_score(model, env, args.eval_episodes, seed=10_000)
    start = time.perf_counter()
    model.learn(args.steps, callback=SyncTextEnvCallback())  # keeps the env's KV caches in step with the weights
    wall = time.perf_counter() - start
    after = mean_episode_score(model, env, args.eval_episodes, seed=10_000)
    model.save(run.checkpoints / f"{args.algo}_text")  # the LM travels by handle: see agents.sb3.text_policy.LMHandle
    run.log(0, {"eval/keyword_score": before})
    run.log(args.steps, {"eval/keyword_score": after})
    summary = {"algo": f"sb3-{args.algo}", "keyword_score_before": before, "keyword_score_after": after,
               "env_steps": args.steps, "wall_s": wall}
    run.write_summary(summary)
    run.plot([(f"'{KEYWORD}' per response", ["eval/keyword_score"])], title=f"SB3 {args.algo.upper()} on TextGen-v0")
    run.close()
    print(f"SB3 {args.algo.upper()}: '{KEYWORD}' per response {before:.2f} -> {after:.2f} after {args.steps} steps "
          f"in {wall:.0f} s; run directory: {run.path}")
    return summary


if __name__ == "__main__":
    main()
