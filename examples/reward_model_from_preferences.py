"""The reward-learning parts on their own: segments -> pairs -> teacher labels -> Bradley-Terry ensemble.

Collects random-policy trajectories of Pendulum-v1, cuts them into 25-step segments, draws pairs, labels them with
a noisy (Boltzmann-rational) B-Pref teacher, fits an ensemble of MLP reward nets, and measures how often the learned
reward orders held-out pairs as the TRUE reward does. Then it picks the next queries by ensemble disagreement, as
the online loop does. Writes the labelled pairs (safe ``.npz``) and the ensemble to the run directory.

    python examples/reward_model_from_preferences.py
    python examples/reward_model_from_preferences.py --pairs 100 --epochs 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.rundir import RunDir
from rewardmodels import (
    FitConfig,
    RewardEnsemble,
    cut_segments,
    make_teacher,
    random_pairs,
    select_pairs,
    trajectories_from_rollout,
)


def collect(env_id: str, steps: int, seed: int):
    """Random-policy rollout as flat arrays (what ``trajectories_from_rollout`` splits at episode ends)."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows = {"obs": [], "acts": [], "rews": [], "terminated": [], "truncated": []}
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, rew, term, trunc, _ = env.step(act)
        for key, value in zip(rows, (obs, act, rew, term, trunc), strict=True):
            rows[key].append(value)
        obs = env.reset()[0] if term or trunc else nxt
    return env.observation_space, env.action_space, {k: np.asarray(v) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=6_000, help="random-policy env steps to cut segments from")
    parser.add_argument("--pairs", type=int, default=300, help="labelled pairs (the label budget)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/reward_model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = RunDir(args.out)
    run.write_config(vars(args))

    obs_space, act_space, data = collect(args.env, args.steps, args.seed)
    trajectories = trajectories_from_rollout(**data)
    rng = np.random.default_rng(args.seed)
    segments = cut_segments(trajectories, segment_len=25, n=400, rng=rng)
    train = random_pairs(segments, args.pairs, rng, obs_space=obs_space, act_space=act_space)
    heldout = random_pairs(segments, 500, rng, obs_space=obs_space, act_space=act_space)

    teacher = make_teacher("noisy", beta=1.0, seed=args.seed)  # P(a > b) = sigmoid(beta * (R_a - R_b))
    train = train.with_labels(teacher.label(train.true_rew_a, train.true_rew_b, train.mask_a, train.mask_b))
    train.save(Path(args.out) / "pairs.npz")  # written atomically; reload with PreferenceDataset.load

    ensemble = RewardEnsemble.mlp(obs_space, act_space, n_members=3, seed=args.seed)
    before = ensemble.evaluate(heldout)["true_accuracy"]
    fit = ensemble.fit(train, FitConfig(epochs=args.epochs))
    after = ensemble.evaluate(heldout)["true_accuracy"]
    ensemble.save(run.checkpoints / "ensemble.safetensors")
    run.log(0, {"reward_model/true_agreement": before})
    run.log(args.pairs, {"reward_model/true_agreement": after, "reward_model/accuracy": fit["accuracy"]})

    candidates = random_pairs(segments, 10 * 20, rng, obs_space=obs_space, act_space=act_space)  # 10x oversampling
    chosen = candidates.subset(select_pairs(candidates, 20, "disagreement", ensemble))
    summary = {"labels_used": args.pairs, "true_agreement_before": before, "true_agreement_after": after,
               "train_accuracy": fit["accuracy"], "next_queries": len(chosen)}
    run.write_summary(summary)
    run.plot([("agreement with the true preferences", ["reward_model/true_agreement", "reward_model/accuracy"])],
             title=f"{args.env}: Bradley-Terry ensemble")
    run.close()
    print(f"held-out agreement with the true reward: {before:.2f} before fitting -> {after:.2f} after "
          f"{args.pairs} noisy labels; picked {len(chosen)} next queries by disagreement; run directory: {args.out}")
    return summary


if __name__ == "__main__":
    main()
