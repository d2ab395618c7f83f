"""An Atari agent trained on its learned reward (the ``christiano-atari`` preset end to end) against the same agent on
the game score, at the same frames; learning curves side by side in one plot.

Two runs, each in its own process (``--jobs 2`` runs them at once), same algorithm, hyperparameters, envs and seed:

* ``prefs``: ``rlhf-gym prefs --preset christiano-atari`` (``agents/loop/control/presets.py``): the agent never sees the
  score; an oracle teacher labels pairs of 25-step segments by their change in game score, chosen by ensemble
  disagreement, and the agent trains on the paper's CNN reward;
* ``rl``: the same agent on the game score, clipped to its sign (Mnih et al. 2015, the standard for Atari agents).

Both curves are the true game score of the training episodes (the mean of the last 100, as SB3 logs it) against
frames (env steps x 4); each side's final policy is also evaluated on ``--eval-episodes`` whole games (sampled
actions, as in training), and a uniformly random policy gives the baseline. The question (the paper's Atari claim,
at a CPU budget): does the agent on its learned reward gain at least half as much over random as the agent on the
game score?

The preset's budgets are the paper's (50M env steps, 5,500 labels, 200 pre-training epochs, 1 label processed per 10
env steps); ``CPU_OVERRIDES`` cuts them to what one CPU core does in about 70 minutes for the learned-reward side
(the reward CNN's training is the cost: ~22 labelled pairs per second on a quiet core; the game-score side takes
~8 minutes); benchmarks/RESULTS.md has the Qbert result at this budget. ``--set`` changes any of them; ``--full``
keeps the paper's (a GPU machine, days).

    python benchmarks/christiano_atari_agent.py --game ALE/Qbert-v5 --steps 250000 --jobs 2 \\
        --out benchmarks/out/christiano_atari_agent
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import christiano_mujoco as mujoco_table  # noqa: E402  (the same evaluation and random baseline)

#: Ours, for a CPU: 1,000 labels (500 of them from the random initial policy, as A.2), 10 pre-training epochs instead
#: of 200 (3 left the predictor at chance), 1 label processed per 100 env steps instead of per 10. Everything else is
#: the preset's (A.2).
CPU_OVERRIDES: dict[str, Any] = dict(labels=1_000, pretrain_epochs=10, fit_rate=0.01)
CURVE_EVERY = 10_000


def config(game: str, steps: int, seed: int, eval_episodes: int, full: bool, extra: dict[str, Any]):
    from agents.loop import PrefsConfig

    overrides = {**({} if full else CPU_OVERRIDES), **extra}
    return PrefsConfig.from_preset("christiano-atari", game, steps=steps, seed=seed, progress_bar=False,
                                   eval_every=0, eval_episodes=eval_episodes, **overrides)


def run_rl(cfg, out: Path) -> dict[str, Any]:
    """The preset's agent on the sign-clipped game score; the curve of true training-episode returns."""
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.sb3.control import algorithm_class, make_vec_env, resolve_hyperparams

    params = resolve_hyperparams(dict(cfg.hyperparams))
    n_envs = int(params.pop("n_envs", 1))
    for key in ("learning_rate", "clip_range"):  # "lin_x": linear decay to 0 over the run, as the preset's agent
        value = params.get(key)
        if isinstance(value, str) and value.startswith("lin_"):
            start = float(value[4:])
            params[key] = lambda remaining, start=start: start * remaining
    venv = make_vec_env(cfg.env_id, n_envs, cfg.seed, wrapper=lambda e: gym.wrappers.TransformReward(e, np.sign))
    curve: list[dict[str, float]] = []

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps // CURVE_EVERY > len(curve) and self.model.ep_info_buffer:
                curve.append({"step": float(self.num_timesteps), "agent/true_ep_return":
                              float(np.mean([ep["r"] for ep in self.model.ep_info_buffer]))})
            return True

    start, cpu = time.perf_counter(), time.process_time()
    model = algorithm_class(cfg.algo)("CnnPolicy", venv, seed=cfg.seed, device=cfg.device, verbose=0, **params)
    model.learn(cfg.steps, callback=Curve())
    returns = evaluate(model, cfg.env_id, cfg.eval_episodes)
    venv.close()
    model.save(out / "rl_agent.zip")  # the final policy, to evaluate again (the prefs side's is in its checkpoints)
    (out / "rl_curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    return {"true_return_mean": float(returns.mean()), "true_return_std": float(returns.std()),
            "env_steps": int(model.num_timesteps), "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu}


def evaluate(model, env_id: str, episodes: int) -> np.ndarray:
    """Whole-game scores of the policy as it acts in training (sampled actions: a greedy Atari policy can stand
    still forever), on evaluation envs seeded apart from training."""
    return mujoco_table.evaluate(model, env_id, episodes, deterministic=False)


def random_return(env_id: str, episodes: int) -> float:
    import agents.loop.control.atari  # noqa: F401  (registers the preprocessed ids)

    return mujoco_table.random_return(env_id, episodes)


def run_one(side: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from agents.loop import run_prefs
    from agents.rundir import prepare_out

    torch.set_num_threads(args.threads)
    cfg = config(args.game, args.steps, args.seed, args.eval_episodes, args.full, json.loads(args.set))
    out = Path(args.out)
    if side == "prefs":
        from agents.sb3.control import algorithm_class

        summary = run_prefs(cfg, prepare_out(out / "prefs", overwrite=True))  # an interrupted try: aside
        result = {k: summary[k] for k in ("env_steps", "wall_s", "cpu_s", "labels_used")}
        ckpt = out / "prefs" / "checkpoints"
        model = algorithm_class(cfg.algo).load(ckpt / json.loads((ckpt / "latest.json").read_text())["checkpoint"]
                                               / "agent.zip", device="cpu")
        returns = evaluate(model, cfg.env_id, cfg.eval_episodes)  # as the rl side: sampled actions
        result.update(true_return_mean=float(returns.mean()), true_return_std=float(returns.std()))
    else:
        result = run_rl(cfg, out)
    return {"side": side, "game": args.game, "algo": cfg.algo, "steps": cfg.steps, "seed": cfg.seed, **result}


def curves(out: Path) -> dict[str, list[tuple[float, float]]]:
    """side -> [(env steps, mean true return of the last training episodes)]."""
    found = {}
    for side, path in (("prefs", out / "prefs" / "metrics.jsonl"), ("rl", out / "rl_curve.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        found[side] = [(r["step"], r["agent/true_ep_return"]) for r in rows if "agent/true_ep_return" in r]
    return found


def plot(out: Path, game: str, results: dict[str, dict], rand: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    labels = {"prefs": f"learned reward ({results['prefs']['labels_used']} labels)", "rl": "game score"}
    for side, points in curves(out).items():
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(np.asarray(x) * 4, y, label=labels[side])
    ax.axhline(rand, color="grey", linestyle="--", label="random policy")
    ax.set_xlabel("frames (env steps x 4)")
    ax.set_ylabel("game score (training episodes)")
    ax.set_title(f"{game}: {results['prefs']['algo'].upper()}, seed {results['prefs']['seed']}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="ALE/Qbert-v5")
    parser.add_argument("--steps", type=int, default=250_000, help="env steps per side (frames / 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=30, help="whole games per final policy")
    parser.add_argument("--random-episodes", type=int, default=100,
                        help="whole games of the uniformly random policy (the baseline of both gains)")
    parser.add_argument("--full", action="store_true", help="the preset's (paper's) budgets, not CPU_OVERRIDES")
    parser.add_argument("--set", default="{}", help="JSON of further PrefsConfig overrides, e.g. '{\"ensemble\": 1}'")
    parser.add_argument("--jobs", type=int, default=2, help="1: the sides one after the other")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side")
    parser.add_argument("--out", default="benchmarks/out/christiano_atari_agent")
    parser.add_argument("--one", choices=("prefs", "rl"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("steps", "eval_episodes", "random_episodes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        (out / f"{args.one}.json").write_text(json.dumps(run_one(args.one, args), indent=2))
        return
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--game", args.game, "--steps", str(args.steps), "--seed", str(args.seed),
           "--eval-episodes", str(args.eval_episodes), "--set", args.set, "--threads", str(args.threads),
           "--out", args.out] + (["--full"] if args.full else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: dict[str, subprocess.Popen] = {}
    for side in ("prefs", "rl"):
        if (out / f"{side}.json").exists():
            continue  # finished earlier: an interrupted comparison resumes
        with open(out / f"{side}.log", "w") as log:
            procs[side] = subprocess.Popen([*cmd, "--one", side], stdout=log, stderr=subprocess.STDOUT, env=env)
        if args.jobs < 2:
            procs[side].wait()
    for side, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {side} run failed (exit {proc.returncode}); see {out / (side + '.log')}")
    results = {side: json.loads((out / f"{side}.json").read_text()) for side in ("prefs", "rl")}
    rand = random_return(results["rl"].get("env_id", f"AtariPreprocessed/{args.game.split('/')[-1]}"),
                         args.random_episodes)
    p, r = results["prefs"]["true_return_mean"], results["rl"]["true_return_mean"]
    final_points = {side: pts[-1][1] if pts else float("nan") for side, pts in curves(out).items()}
    row = {"game": args.game, "steps": args.steps, "frames": 4 * args.steps, "seed": args.seed,
           "labels": results["prefs"]["labels_used"], "random": rand, "random_episodes": args.random_episodes,
           "eval_episodes": args.eval_episodes,
           "eval_learned_reward": p, "eval_game_score": r, "gain_ratio_eval": (p - rand) / (r - rand),
           "train_curve_final_learned_reward": final_points["prefs"],
           "train_curve_final_game_score": final_points["rl"],
           "gain_ratio_train_curve": (final_points["prefs"] - rand) / (final_points["rl"] - rand),
           "cpu_s": {side: results[side]["cpu_s"] for side in results}, "wall_s": time.perf_counter() - start}
    png = plot(out, args.game, results, rand)
    (out / "results.json").write_text(json.dumps({"summary": row, "runs": results, "args": vars(args)}, indent=2))
    print(json.dumps(row, indent=2))
    print(f"written: {out / 'results.json'}, {png}")


if __name__ == "__main__":
    main()
