"""Christiano et al. 2017 on Atari (Pong), CPU evidence: does the paper's CNN, fitted to at most 3,300 synthetic labels
on 25-step segments, learn a reward that follows the game score?

1. Collect frames of ``--game`` (standard preprocessing, 4 stacked 84x84 frames) with a behaviour policy that both
   wins and loses points: per episode, a RAM-reading paddle tracker (Pong only) taking uniformly random actions with
   probability eps in {0, 0.3, 1} (``--policy random``: random actions throughout). Frames go into a
   ``FrameStore``; segments are windows into it (``rewardmodels.image_segments``), never copies.
2. ``--labels`` random pairs of 25-step segments, labelled by the oracle teacher on the game score.
3. Fit ``--members`` CNN reward nets (``rewardmodels.cnn.CNNRewardNet``: the paper's architecture, dropout
   ``--dropout``, default the paper's 0.5) with the Bradley-Terry loss and the paper's 10% random-response noise, each
   on its own bootstrap of the labels; minibatches are gathered from the frame store as uint8.
4. On held-out segments from a separate rollout (another seed), report the Pearson and Spearman correlation between
   the learned segment return (ensemble mean of the summed predicted rewards) and the true segment return (the
   change in game score), and the agreement with the true preference on held-out pairs of unequal true return.

No agent is trained by default: reaching the paper's Pong score (+15 and better with 3,300 labels) takes tens of
millions of env steps (A2C, GPU, hours). ``--loop-steps N`` also runs the ``christiano-atari`` preset end to end
for N env steps and reports the true return it reached.

Usage::

    python benchmarks/christiano_atari.py --collect-steps 20000 --labels 1500 --epochs 6 --members 1 \\
        --heldout-steps 6000 --out benchmarks/out/christiano_atari
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("christiano_atari")


def behaviour_policy(env, kind: str, rng: np.random.Generator):
    """A policy that wins some points: Pong's paddle tracker (RAM: 51 = own paddle y, 54 = ball y) with per-episode
    random-action probability eps in {0, 0.3, 1}; or uniformly random actions."""
    ale = env.unwrapped.ale
    n_actions = env.action_space.n
    state = {"eps": 1.0, "t": 0}

    def act(obs):
        state["t"] += 1
        if state["t"] % 2_000 == 1:  # roughly once per episode
            state["eps"] = 1.0 if kind == "random" else float(rng.choice([0.0, 0.3, 1.0]))
        if rng.random() < state["eps"]:
            return int(rng.integers(n_actions))
        ram = ale.getRAM()
        return 2 if int(ram[54]) < int(ram[51]) + 8 else 3  # RIGHT moves the paddle up, LEFT down

    return act


def collect(game: str, steps: int, seed: int, policy: str):
    import gymnasium as gym

    from agents.loop.control.atari import atari_env_id
    from rewardmodels.image_segments import FrameStore, record_rollout

    env = gym.make(atari_env_id(game))
    store = FrameStore((84, 84), stack=4, capacity=steps + 1_000)
    if policy != "random" and "Pong" not in game:
        policy = "random"  # the tracker reads Pong's RAM
    roll = record_rollout(env, behaviour_policy(env, policy, np.random.default_rng(seed)), steps, store, seed=seed)
    spaces = (env.observation_space, env.action_space)
    env.close()
    return store, roll, spaces


def make_pairs(store, roll, n_pairs: int, segment_len: int, rng: np.random.Generator):
    from rewardmodels.image_segments import ImagePairs, cut_segments
    from rewardmodels.teachers import Teacher

    seg = cut_segments(roll, segment_len, 2 * n_pairs, rng)
    a, b = np.arange(n_pairs), np.arange(n_pairs, 2 * n_pairs)
    labels = Teacher(seed=int(rng.integers(2**31))).label(seg["true_rew"][a], seg["true_rew"][b],
                                                           seg["mask"][a], seg["mask"][b])
    return ImagePairs(store, seg["starts"][a], seg["starts"][b], seg["acts"][a], seg["acts"][b],
                      seg["true_rew"][a], seg["true_rew"][b], seg["mask"][a], seg["mask"][b], labels)


def fit_member(net, pairs, epochs: int, batch: int, lr: float, noise: float, rng: np.random.Generator) -> list[float]:
    """Bradley-Terry on a bootstrap of ``pairs``; minibatches gathered from the frame store as uint8."""
    from rewardmodels.losses import bradley_terry_loss
    from rewardmodels.nets import segment_returns

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    idx = rng.choice(len(pairs), size=len(pairs), replace=True)
    losses = []
    net.train()
    for epoch in range(epochs):
        perm = rng.permutation(idx)
        total = 0.0
        for i in range(0, len(perm), batch):
            rows = perm[i:i + batch]
            obs = torch.cat([pairs.obs_a.torch(rows), pairs.obs_b.torch(rows)])  # (2B, T, 4, 84, 84) uint8
            acts = torch.as_tensor(np.concatenate([pairs.acts_a[rows], pairs.acts_b[rows]]))
            mask = torch.as_tensor(np.concatenate([pairs.mask_a[rows], pairs.mask_b[rows]]))
            ret = segment_returns(net, obs, acts, mask)
            loss, _ = bradley_terry_loss(ret[: len(rows)], ret[len(rows):], torch.as_tensor(pairs.labels[rows]),
                                         noise=noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(rows)
        losses.append(total / len(perm))
        logger.info("epoch %d: train loss %.4f", epoch + 1, losses[-1])
    return losses


@torch.no_grad()
def segment_returns_of(nets, segments, acts, mask, chunk: int = 16) -> np.ndarray:
    from rewardmodels.nets import segment_returns

    out = []
    for i in range(0, len(segments), chunk):
        rows = np.arange(i, min(i + chunk, len(segments)))
        obs = segments.torch(rows)
        a, m = torch.as_tensor(acts[rows]), torch.as_tensor(mask[rows])
        per_net = [segment_returns(n, obs, a, m) / n.norm_scale for n in nets]  # normalised members, then mean
        out.append(torch.stack(per_net).mean(0).numpy())
    return np.concatenate(out)


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="ALE/Pong-v5")
    parser.add_argument("--collect-steps", type=int, default=20_000, help="env steps of labelled experience")
    parser.add_argument("--heldout-steps", type=int, default=6_000, help="env steps of held-out experience")
    parser.add_argument("--labels", type=int, default=1_500, help="synthetic labels (the paper: <= 3,300 on Pong)")
    parser.add_argument("--segment-len", type=int, default=25, help="steps per segment (the paper: 25)")
    parser.add_argument("--members", type=int, default=1, help="ensemble members (the preset: 3)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="pairs per minibatch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--dropout", type=float, default=0.5, help="the paper: 0.5")
    parser.add_argument("--noise", type=float, default=0.1, help="random-response rate (the paper: 0.1)")
    parser.add_argument("--policy", choices=["mixed", "random"], default="mixed")
    parser.add_argument("--heldout-segments", type=int, default=1_000)
    parser.add_argument("--loop-steps", type=int, default=0, help="also run the preset for N env steps (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/christiano_atari")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.labels > 3_300:
        parser.error("--labels: the Pong target is <= 3,300 synthetic labels")
    from rewardmodels.cnn import CNNRewardNet
    from rewardmodels.image_segments import StackedSegments, cut_segments

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    store, roll, (obs_space, act_space) = collect(args.game, args.collect_steps, args.seed, args.policy)
    pairs = make_pairs(store, roll, args.labels, args.segment_len, rng)
    logger.info("collected %d steps (%d frames, %.0f MB), score events %+d/%d; labels: %d a, %d b, %d ties",
                len(roll.pos), len(store), store.nbytes / 2**20, int((roll.rews > 0).sum()),
                int((roll.rews < 0).sum()), int((pairs.labels == 1).sum()), int((pairs.labels == 0).sum()),
                int((pairs.labels == 0.5).sum()))
    nets, curves = [], []
    for m in range(args.members):
        torch.manual_seed(args.seed * 1000 + m)
        net = CNNRewardNet(obs_space, act_space, dropout=args.dropout)
        curves.append(fit_member(net, pairs, args.epochs, args.batch, args.lr, args.noise, rng))
        obs_all = np.concatenate([pairs.obs_a[np.arange(min(len(pairs), 200))],
                                  pairs.obs_b[np.arange(min(len(pairs), 200))]])
        mask_all = np.concatenate([pairs.mask_a[:200], pairs.mask_b[:200]])
        acts_all = np.concatenate([pairs.acts_a[:200], pairs.acts_b[:200]])
        net.fit_normalizer(obs_all, acts_all, mask_all)  # precise batch norm + std-1 output
        nets.append(net.eval())
    fit_s = time.perf_counter() - start

    h_store, h_roll, _ = collect(args.game, args.heldout_steps, args.seed + 10_007, args.policy)
    seg = cut_segments(h_roll, args.segment_len, args.heldout_segments, np.random.default_rng(args.seed + 1))
    pred = segment_returns_of(nets, StackedSegments(h_store, seg["starts"], args.segment_len), seg["acts"],
                              seg["mask"])
    true = (seg["true_rew"] * seg["mask"]).sum(1)
    pearson = float(np.corrcoef(pred, true)[0, 1])
    spearman = float(np.corrcoef(rank(pred), rank(true))[0, 1])
    i, j = np.triu_indices(len(true), k=1)
    decided = true[i] != true[j]
    agree = float(np.mean((pred[i] > pred[j])[decided] == (true[i] > true[j])[decided]))
    result = {
        "game": args.game, "labels": int(len(pairs)), "segment_len": args.segment_len,
        "labelled_env_steps": int(len(roll.pos)), "heldout_env_steps": int(len(h_roll.pos)),
        "heldout_segments": int(len(true)), "heldout_true_returns": {str(v): int((true == v).sum())
                                                                     for v in np.unique(true)},
        "members": args.members, "epochs": args.epochs, "dropout": args.dropout,
        "pearson": pearson, "spearman": spearman, "heldout_pair_agreement": agree,
        "train_loss_first_last": [[c[0], c[-1]] for c in curves], "fit_wall_s": fit_s,
        "wall_s": time.perf_counter() - start, "frames_stored": len(store),
    }
    if args.loop_steps:
        from agents.loop import PrefsConfig, run_prefs
        from agents.rundir import prepare_out

        config = PrefsConfig.from_preset("christiano-atari", args.game, labels=args.labels, steps=args.loop_steps,
                                         seed=args.seed, progress_bar=False)
        summary = run_prefs(config, prepare_out(Path(args.out) / "loop", overwrite=True))
        result["loop"] = {k: summary[k] for k in ("true_return_mean", "true_return_std", "labels_used", "env_steps",
                                                  "wall_s")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\n{args.game}: {len(pairs)} labels on {len(roll.pos)} steps; held-out segment returns vs learned: "
          f"Pearson {pearson:.3f}, Spearman {spearman:.3f}, pair agreement {agree:.3f} ({fit_s:.0f} s to fit)")


if __name__ == "__main__":
    main()
