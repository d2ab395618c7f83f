"""A multi-turn task learned on a CPU: ``SecondOpinion`` (``textenv.environments.reviews``) by GRPO, PPO and SB3 PPO on
the environment's reward, and by RLHF (GRPO on a reward model fitted to 64 labels of a teacher that compares the
environment's returns; the policy never sees those rewards).

Turn 1: the policy writes a review from an opener. The environment answers "My sister loved it." or "My sister hated
it." (a fair coin) and rewards the second turn with its VADER sentiment times +1 / -1. A policy that ignores the reply
scores 0 in expectation; the untrained default LM scores about 0.05. Reported per seed: the mean return of 64 fresh
episodes (held-out tasks) before and after, and separately when the sister loved it and when she hated it (both must
rise for the policy to be reading her), and the wall-clock time.

    python benchmarks/multiturn_second_opinion.py --seeds 1 2 3   # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from textenv import TextGenVectorEnv
from textenv.default_lm import load_default_lm
from textenv.environments import SecondOpinion
from textenv.sampling import sample_tokens

SETTINGS = dict(environment=SecondOpinion, max_new_tokens=40, max_prompt_tokens=16, max_turn_tokens=16)
BUDGET = {"grpo": 60, "ppo": 60, "sb3-ppo": 20, "rlhf-grpo": 40}  # iterations (SB3: rollouts of 512 steps)


def evaluate(lm, tok, seed: int) -> dict[str, float]:
    env = TextGenVectorEnv(64, model=lm, tokenizer=tok, kl_coef=0.0, ref_model=None, array_backend="torch",
                           **SETTINGS)
    env.reset(seed=10_000 + seed)
    scores = env.play(torch.Generator().manual_seed(seed), sample_tokens).scores
    sides = np.array([e.env.side for e in env.engine.conv.envs])
    return {"return": float(scores.mean()), "loved": float(scores[sides > 0].mean()),
            "hated": float(scores[sides < 0].mean())}


def train(algo: str, lm, tok, seed: int, out: Path, rlhf_pairs: int = 64) -> None:
    its = BUDGET[algo]
    if algo == "grpo":
        from agents.llm.grpo import GRPOAgent, GRPOConfig

        env = TextGenVectorEnv(32, model=lm, tokenizer=tok, kl_coef=0.0, array_backend="torch", **SETTINGS)
        GRPOAgent(env, GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=2e-4, seed=seed)).learn(its)
    elif algo == "ppo":
        from agents.llm.ppo import PPOAgent, PPOConfig

        env = TextGenVectorEnv(32, model=lm, tokenizer=tok, kl_coef=0.05, array_backend="torch", **SETTINGS)
        PPOAgent(env, PPOConfig(learning_rate=1e-4, seed=seed)).learn(its)
    elif algo == "sb3-ppo":
        from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
        from agents.sb3.text_vec_env import TextGenSB3VecEnv

        venv = TextGenSB3VecEnv(TextGenVectorEnv(8, model=lm, tokenizer=tok, kl_coef=0.05, autoreset_mode="SameStep",
                                                 **SETTINGS))
        venv.seed(seed)
        model = make_sb3_text_model("ppo", venv, n_steps=64, batch_size=128, n_epochs=4, ent_coef=0.0,
                                    learning_rate=1e-4, gamma=1.0, gae_lambda=0.95, seed=seed)
        model.learn(its * 512, callback=SyncTextEnvCallback())
    else:  # RLHF through the loop: a reward model on 64 labels of conversation pairs, GRPO on it
        from agents.loop.text.config import TextRLHFConfig
        from agents.loop.text.run import run_text_rlhf
        from agents.rundir import prepare_out

        cfg = TextRLHFConfig.for_algo(
            "grpo", environment="textenv.environments.reviews:SecondOpinion", num_pairs=rlhf_pairs, iterations=its,
            max_new_tokens=40, max_turn_tokens=16, eval_prompts=8, eval_every=0, seed=seed, progress_bar=False)
        run_dir = prepare_out(out / f"rlhf-{rlhf_pairs}-seed{seed}", overwrite=True)
        run_text_rlhf(cfg, run_dir, model=lm, tokenizer=tok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--algos", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-multiturn"))
    parser.add_argument("--rlhf-pairs", type=int, default=64, help="labels of the rlhf-grpo row (64)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for algo in args.algos:
            lm, tok = load_default_lm()
            torch.manual_seed(seed)
            before = evaluate(lm, tok, seed)
            start = time.perf_counter()
            train(algo, lm, tok, seed, args.out, args.rlhf_pairs)
            wall = time.perf_counter() - start
            after = evaluate(lm, tok, seed)
            name = f"{algo} ({args.rlhf_pairs} labels)" if algo == "rlhf-grpo" else algo
            rows.append({"algo": name, "budget": BUDGET[algo], "seed": seed, "before": before, "after": after,
                         "wall_s": wall})
            print(f"{algo} seed {seed}: return {before['return']:+.3f} -> {after['return']:+.3f} (loved "
                  f"{after['loved']:+.3f}, hated {after['hated']:+.3f}), {wall:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))  # --algos/--seeds subsets: one file per --out
    lines = ["| algorithm | budget | seed | return before | return after | after, sister loved it | after, she hated "
             "it | both sides > 0.3 | wall-clock (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = "rollouts" if r["algo"] == "sb3-ppo" else "iterations"
        budget = r["budget"]
        ok = "yes" if min(r["after"]["loved"], r["after"]["hated"]) > 0.3 else "no"
        lines.append(f"| {r['algo']} | {budget} {unit} | {r['seed']} | {r['before']['return']:+.3f} | "
                     f"{r['after']['return']:+.3f} | {r['after']['loved']:+.3f} | {r['after']['hated']:+.3f} | {ok} | "
                     f"{r['wall_s']:.0f} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
