"""Why a CartPole preference run stalls: evidence from finished run directories of ``benchmarks/prefs_control.py``.

For each run directory (its last checkpoint: the final reward ensemble, the labelled pairs, the config):

* ``frozen``: a fresh agent, the run's own algorithm and hyperparameters, trained for the run's env steps on the
  FINAL learned reward held fixed (no refits), then evaluated on the true reward. If it solves the task, the final
  reward is good enough and the failure lies in how the agent met the reward during the run (refits, scale).
* ``reward vs x``: the learned reward at cart positions across the track (pole upright, all velocities 0), and the
  learned return (per step, normalised as the agent sees it) of a balanced 50-step segment at the centre.
* ``labelled endings``: of the labelled segments that end in termination, how many end at the track limit
  (|x| > 2.0 at the last step) and how many by the pole falling: whether the labeller ever saw the failure that ends
  the stalled agent's episodes.

* ``--constant C ...``: the preset's PPO on CartPole-v1 with a CONSTANT reward of C per step (the true reward is
  C = 1) for 48k steps, per seed (``--vecnormalize``: with SB3's return normalisation on top). Same task, same optimal
  policy: whatever changes with C is the agent's sensitivity to the reward's scale.

    python benchmarks/prefs_diagnose.py benchmarks/out/prefs_control/CartPole-v1-seed1-threads-1 ...
    python benchmarks/prefs_diagnose.py --constant 1 2 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402

from agents.loop.control.config import PrefsConfig  # noqa: E402
from agents.loop.control.segment_pairs import DATASET_FILE  # noqa: E402
from agents.sb3.control import SB3Agent, default_hyperparams  # noqa: E402
from rewardmodels.ensemble import RewardEnsemble  # noqa: E402
from rewardmodels.preferences import PreferenceDataset  # noqa: E402


def last_checkpoint(run: Path) -> Path:
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    return run / "checkpoints" / latest


def labelled_endings(dataset: PreferenceDataset) -> dict[str, int]:
    counts = {"segments": 0, "terminated": 0, "track_limit": 0, "pole": 0}
    for obs, mask in ((dataset.obs_a, dataset.mask_a), (dataset.obs_b, dataset.mask_b)):
        mask = np.asarray(mask, bool)
        counts["segments"] += len(mask)
        for o, m in zip(obs, mask, strict=True):
            n = int(m.sum())
            if n == len(m):
                continue  # the segment did not end inside the window
            counts["terminated"] += 1
            x, theta = float(o[n - 1][0]), float(o[n - 1][2])
            counts["track_limit" if abs(x) > 2.0 else "pole"] += 1 if (abs(x) > 2.0 or abs(theta) > 0.15) else 0
    return counts


def reward_vs_x(ensemble: RewardEnsemble) -> dict[str, float]:
    xs = np.linspace(-2.4, 2.4, 9)
    obs = np.zeros((len(xs), 4), np.float32)
    obs[:, 0] = xs
    rewards = {}
    for action in (0, 1):
        r = ensemble.predict_reward(obs, np.full(len(xs), action))
        rewards[action] = r
    mean = (rewards[0] + rewards[1]) / 2
    return {f"x={x:+.1f}": round(float(v), 4) for x, v in zip(xs, mean, strict=True)}


def frozen_reward_agent(cfg: PrefsConfig, ensemble: RewardEnsemble, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    agent = SB3Agent(cfg.algo, cfg.env_id, ensemble.predict_reward, total_steps=steps, seed=seed, device="cpu",
                     hyperparams=cfg.hyperparams)
    try:
        agent.learn(steps, max_steps=steps)
        return float(np.mean(agent.evaluate(20)))
    finally:
        agent.close()


def constant_reward_agent(scale: float, seed: int, vecnormalize: bool, steps: int = 48_000) -> float:
    torch.manual_seed(seed)
    hyper = default_hyperparams("ppo", "CartPole-v1")
    agent = SB3Agent("ppo", "CartPole-v1", lambda o, a: np.full(len(o), scale, np.float32), total_steps=steps,
                     seed=seed, device="cpu", hyperparams=hyper)
    try:
        if vecnormalize:
            agent.model.set_env(VecNormalize(agent.venv, norm_obs=False, norm_reward=True, gamma=hyper["gamma"]))
        agent.learn(steps, max_steps=steps)
        return float(np.mean(agent.evaluate(20)))
    finally:
        agent.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--constant", type=float, nargs="+", default=[], help="constant rewards to train PPO on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of --constant")
    parser.add_argument("--vecnormalize", action="store_true", help="--constant with SB3's VecNormalize(rewards)")
    parser.add_argument("--frozen-steps", type=int, default=None, help="default: the run's env-step budget")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict] = []
    for scale in args.constant:
        returns = [constant_reward_agent(scale, seed, args.vecnormalize) for seed in args.seeds]
        rows.append({"constant_reward": scale, "vecnormalize": args.vecnormalize, "seeds": args.seeds,
                     "true_returns": returns})
        print(json.dumps(rows[-1]), flush=True)
    for run in args.runs:
        cfg = PrefsConfig.load(run)
        ckpt = last_checkpoint(run)
        ensemble = RewardEnsemble.load(ckpt / RewardEnsemble.checkpoint_name)
        dataset = PreferenceDataset.load(ckpt / DATASET_FILE)
        summary = json.loads((run / "summary.json").read_text())
        row = {
            "run": run.name,
            "true_return_of_run": summary["true_return_mean"],
            "frozen_final_reward_agent": frozen_reward_agent(cfg, ensemble, args.frozen_steps or cfg.steps, cfg.seed),
            "reward_vs_x": reward_vs_x(ensemble),
            "labelled_endings": labelled_endings(dataset),
            "norm_scale": [float(m.norm_scale) for m in ensemble.members],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
