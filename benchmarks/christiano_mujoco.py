"""Christiano et al. 2017 on MuJoCo: 700 synthetic labels against PPO on the true reward, same env steps, same seeds.

For each env and seed, two runs with identical PPO settings (the ``christiano-mujoco`` preset's):

* ``prefs``: the ``christiano-mujoco`` preset (``agents/loop/presets.py``): the agent never sees the true reward; an
  oracle teacher labels 700 segment pairs (1.5 s each) chosen by ensemble disagreement, and the agent trains on the
  learned reward;
* ``rl``: the same PPO on the true reward.

Both are evaluated on the TRUE reward over 20 episodes of the final deterministic policy (the same evaluation envs
and seeds). Printed per env: the mean final return of each side and their ratio (target >= 0.9, the paper's "nearly
matching RL on the true reward with 700 labels"), plus the ratio of improvements over a uniformly random policy
(which stays meaningful when returns are negative). The paper ran millions of steps; the default budget here
(``--steps 100000``) is what a shared 2-core CPU affords.

Usage::

    python benchmarks/christiano_mujoco.py --envs HalfCheetah-v5 Hopper-v5 --steps 100000 --seeds 0 1 \\
        --labels 700 --out benchmarks/out/christiano_mujoco
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch


def _evaluate(model, env_id: str, episodes: int) -> np.ndarray:
    """True returns of the deterministic policy, on the evaluation envs ``SB3Agent.evaluate`` uses."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from agents.sb3.control import make_vec_env

    venv = make_vec_env(env_id, min(episodes, 10), 10_000)
    try:
        returns, _ = evaluate_policy(model, venv, n_eval_episodes=episodes, deterministic=True,
                                     return_episode_rewards=True)
    finally:
        venv.close()
    return np.asarray(returns, dtype=np.float64)


def run_rl(env_id: str, steps: int, seed: int, hyperparams: dict, episodes: int) -> dict:
    """PPO on the true reward with the preset's PPO settings."""
    from stable_baselines3 import PPO

    from agents.sb3.control import make_vec_env

    params = dict(hyperparams)
    n_envs = int(params.pop("n_envs", 1))

    venv = make_vec_env(env_id, n_envs, seed)
    start = time.perf_counter()
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **params)
    model.learn(steps)
    returns = _evaluate(model, env_id, episodes)
    venv.close()
    return {"true_return_mean": float(returns.mean()), "true_return_std": float(returns.std()),
            "env_steps": int(model.num_timesteps), "wall_s": time.perf_counter() - start}


def run_prefs(env_id: str, steps: int, seed: int, labels: int, out: Path, overrides: dict) -> dict:
    from agents.loop import PrefsConfig
    from agents.loop import run_prefs as run_loop

    config = PrefsConfig.from_preset("christiano-mujoco", env_id, labels=labels, steps=steps, seed=seed,
                                     progress_bar=False, **overrides)
    summary = run_loop(config, out)
    summary["hyperparams"] = config.hyperparams
    return summary


def random_return(env_id: str, episodes: int) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(10_000)
    total = []
    for ep in range(episodes):
        env.reset(seed=10_000 + ep)
        done, ret = False, 0.0
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            ret += float(r)
            done = term or trunc
        total.append(ret)
    env.close()
    return float(np.mean(total))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per run (both sides)")
    parser.add_argument("--labels", type=int, default=700)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=None, help="loop rounds (preset: one per 10k steps)")
    parser.add_argument("--reward-epochs", type=int, default=None, help="epochs per reward fit (preset: 20)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/out/christiano_mujoco")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"rounds": args.rounds, "reward_epochs": args.reward_epochs, "eval_episodes": args.eval_episodes,
                 "eval_every": 0}
    rows = []
    for env_id in args.envs:
        rand = random_return(env_id, args.eval_episodes)
        for seed in args.seeds:
            run_dir = out / f"{env_id}-seed{seed}"
            pref = run_prefs(env_id, args.steps, seed, args.labels, run_dir / "prefs", overrides)
            # the same env steps as the preference run took (its initial random-policy collection included)
            rl = run_rl(env_id, pref["env_steps"], seed, pref["hyperparams"], args.eval_episodes)
            row = {"env": env_id, "seed": seed, "steps": args.steps, "labels": pref["labels_used"],
                   "prefs_return": pref["true_return_mean"], "rl_return": rl["true_return_mean"],
                   "random_return": rand, "prefs_env_steps": pref["env_steps"], "rl_env_steps": rl["env_steps"],
                   "prefs_wall_s": pref["wall_s"], "rl_wall_s": rl["wall_s"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'env':<16}{'seeds':>6}{'steps':>9}{'labels':>7}{'prefs':>10}{'PPO true':>10}{'random':>9}"
          f"{'ratio':>8}{'ratio vs random':>17}")
    summary = {}
    for env_id in args.envs:
        sel = [r for r in rows if r["env"] == env_id]
        p, r = np.mean([x["prefs_return"] for x in sel]), np.mean([x["rl_return"] for x in sel])
        rand = sel[0]["random_return"]
        ratio = p / r if r > 0 else float("nan")
        ratio_rand = (p - rand) / (r - rand) if r != rand else float("nan")
        summary[env_id] = {"prefs": p, "rl": r, "random": rand, "ratio": ratio, "ratio_vs_random": ratio_rand,
                           "seeds": len(sel), "labels": sel[0]["labels"]}
        print(f"{env_id:<16}{len(sel):>6}{args.steps:>9}{sel[0]['labels']:>7}{p:>10.1f}{r:>10.1f}{rand:>9.1f}"
              f"{ratio:>8.2f}{ratio_rand:>17.2f}")
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary, "args": vars(args)}, indent=2))
    print(f"\nwritten: {out / 'results.json'} (run directories alongside)")


if __name__ == "__main__":
    main()
