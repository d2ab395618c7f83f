"""Christiano et al. 2017's MuJoCo table: 700 synthetic labels against the same agent on the true reward.

For each env and seed, two runs, each in its own process, with the same agent, settings, env steps and seed:

* ``prefs``: the ``christiano-mujoco`` preset (``agents/loop/control/presets.py``): the agent never sees the true
  reward; an oracle teacher labels 700 segment pairs (1.5 s each) chosen by ensemble disagreement, and the agent trains
  on the learned reward (an off-policy agent relabels its replay buffer after every reward fit: PEBBLE, Lee et al.
  2021);
* ``rl``: the same agent on the true reward.

Both are evaluated on the TRUE reward over 20 episodes of the final deterministic policy (the same evaluation envs
and seeds). Per env: the mean final return of each side over the seeds, their ratio (the paper's "nearly matching RL
on the true reward with 700 labels"; target >= 0.9), and the ratio of gains over a uniformly random policy (which stays
meaningful where returns are negative: Reacher). Each ``prefs`` run also records why it lands where it does
(``diagnose``): its final learned reward's agreement with the true reward on segments of its own final policy and of a
random policy, the true returns its labels saw against the final policy's, and a fresh agent trained on that final
reward held fixed (``--frozen``).

``--table cpu`` (default): the budgets of ``CPU_TABLE``, about an hour for 7 envs x 3 seeds on a 2-core machine with
``--jobs 2``. ``--table full``: the preset's 2M env steps per run (``benchmarks/christiano_full.sh``).

    python benchmarks/christiano_mujoco.py --seeds 0 1 2 --jobs 2 --out benchmarks/out/christiano_mujoco
    python benchmarks/christiano_mujoco.py --envs HalfCheetah-v5 --seeds 0 --steps 150000 --algo ppo

Finished runs are kept (``<out>/<env>-seed<k>/<side>.json``) and skipped when the command is run again, so an
interrupted table resumes; ``--redo`` runs them again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: SAC for the envs whose episodes run long and whose PPO learns slowly at this budget (ours: the paper used TRPO;
#: SAC with replay relabelling after every reward fit is PEBBLE's agent, Lee et al. 2021). Small nets (64 x 64) keep a
#: 150k-step SAC run at ~12 CPU minutes; SB3's other SAC defaults.
SAC_SMALL: dict[str, Any] = dict(n_envs=1, learning_starts=1_000, policy_kwargs=dict(net_arch=[64, 64]))

#: env -> env steps per run and agent (None: the preset's PPO) at the CPU budget.
CPU_TABLE: dict[str, dict[str, Any]] = {
    "InvertedPendulum-v5": dict(steps=50_000, algo=None),
    "InvertedDoublePendulum-v5": dict(steps=100_000, algo=None),
    "Reacher-v5": dict(steps=100_000, algo=None),
    "Swimmer-v5": dict(steps=150_000, algo=None),
    "Hopper-v5": dict(steps=150_000, algo=None),
    "Walker2d-v5": dict(steps=150_000, algo=None),
    "HalfCheetah-v5": dict(steps=150_000, algo="sac"),
}
FULL_STEPS = 2_000_000
SIDES = ("prefs", "rl")
#: ``--table bpref``: the B-Pref tasks (``agents/loop/control/bpref.py``) at 100k env steps (PEBBLE ran 500k-1M), SAC
#: with the ``--preset``'s settings (pebble / surf) but 64 x 64 nets and minibatches of 256 (ours: PEBBLE's 1,024 x 2
#: nets and 1,024-pair batches cost ~50x more CPU per update).
BPREF_TABLE: dict[str, dict[str, Any]] = {env: dict(steps=100_000, algo="sac") for env in (
    "BPref/walker-walk-v0", "BPref/cheetah-run-v0", "BPref/quadruped-walk-v0", "BPref/button-press-v3")}
BPREF_CPU_SAC = dict(batch_size=256, policy_kwargs=dict(net_arch=[64, 64]))


def budget(env_id: str, table: str, steps: int | None, algo: str | None) -> dict[str, Any]:
    """Steps, algorithm and hyperparameter overrides of one env (command-line values win)."""
    if table == "bpref":
        row = dict(BPREF_TABLE.get(env_id, dict(steps=100_000, algo="sac")), cpu_nets=True)
        row["steps"] = steps or row["steps"]
        row["algo"], row["hyperparams"] = algo or row["algo"], None  # the preset's, with BPREF_CPU_SAC's nets
        return row
    row = dict(CPU_TABLE.get(env_id, dict(steps=150_000, algo=None)))
    if table == "full":
        row["steps"] = FULL_STEPS
    if steps is not None:
        row["steps"] = steps
    if algo is not None:
        row["algo"] = algo
    row["hyperparams"] = dict(SAC_SMALL) if row["algo"] == "sac" else None
    if row["algo"] in (None, "ppo"):
        row["algo"] = None  # the preset's PPO and its hyperparameters
    return row


def prefs_config(env_id: str, seed: int, labels: int, row: dict[str, Any], eval_episodes: int,
                 extra: dict[str, Any] | None = None, preset: str = "christiano-mujoco"):
    from agents.loop import PrefsConfig

    overrides = dict(labels=labels, steps=row["steps"], seed=seed, progress_bar=False, eval_every=0,
                     eval_episodes=eval_episodes, algo=row["algo"], hyperparams=row["hyperparams"], **(extra or {}))
    cfg = PrefsConfig.from_preset(preset, env_id, **overrides)
    if row.get("cpu_nets") and cfg.algo == "sac" and "hyperparams" not in (extra or {}):
        cfg = PrefsConfig.from_preset(preset, env_id, **{**overrides, "hyperparams": {**cfg.hyperparams,
                                                                                      **BPREF_CPU_SAC}})
    return cfg


def evaluate(model, env_id: str, episodes: int, deterministic: bool = True) -> np.ndarray:
    """True returns of the policy (deterministic by default), on the evaluation envs and seeds ``SB3Agent.evaluate``
    uses."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from agents.sb3.control import make_vec_env

    venv = make_vec_env(env_id, min(episodes, 20), 10_000)
    try:
        returns, _ = evaluate_policy(model, venv, n_eval_episodes=episodes, deterministic=deterministic,
                                     return_episode_rewards=True)
    finally:
        venv.close()
    return np.asarray(returns, dtype=np.float64)


def run_rl(cfg, steps: int) -> dict[str, Any]:
    """The prefs run's agent (algorithm, hyperparameters, envs, seed) on the TRUE reward for ``steps`` env steps."""
    from agents.sb3.control import algorithm_class, make_vec_env, resolve_hyperparams

    params = resolve_hyperparams(dict(cfg.hyperparams or {}))
    n_envs = int(params.pop("n_envs", 1))
    venv = make_vec_env(cfg.env_id, n_envs, cfg.seed)
    start, cpu = time.perf_counter(), time.process_time()
    model = algorithm_class(cfg.algo)("MlpPolicy", venv, seed=cfg.seed, device="cpu", verbose=0, **params)
    model.learn(steps)
    returns = evaluate(model, cfg.env_id, cfg.eval_episodes)
    venv.close()
    return {"true_return_mean": float(returns.mean()), "true_return_std": float(returns.std()),
            "env_steps": int(model.num_timesteps), "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu, "success": success_rate(model, cfg.env_id, cfg.eval_episodes)}


def success_rate(model, env_id: str, episodes: int) -> float | None:
    """Share of episodes of the deterministic policy in which ``info["success"]`` is ever 1 (Meta-World's measure,
    the one PEBBLE and SURF report), on the evaluation seeds; None for envs without it."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        successes = []
        for episode in range(episodes):
            obs, info = env.reset(seed=10_000 + episode)
            done, success = False, 0.0
            while not done:
                obs, _, terminated, truncated, info = env.step(model.predict(obs, deterministic=True)[0])
                if "success" not in info:
                    return None
                success, done = max(success, float(info["success"])), terminated or truncated
            successes.append(success)
    finally:
        env.close()
    return float(np.mean(successes))


def random_return(env_id: str, episodes: int) -> float:
    import gymnasium as gym

    import agents.loop.control.bpref  # noqa: F401 - registers the BPref/ ids
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


def _rollout_segments(env_id: str, act, seg_len: int, steps: int, seed: int):
    """Consecutive ``seg_len``-step windows (within episodes) of observations, actions and true rewards; ``act``
    None = uniformly random actions (seeded with ``seed``)."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    windows, cur = [], ([], [], [])
    for _ in range(steps):
        action = env.action_space.sample() if act is None else act(obs)
        nxt, reward, term, trunc, _ = env.step(action)
        for buf, value in zip(cur, (obs, action, reward), strict=True):
            buf.append(value)
        obs = nxt
        if len(cur[0]) == seg_len:
            windows.append(tuple(np.asarray(b, dtype=np.float32) for b in cur))
            cur = ([], [], [])
        if term or trunc:
            obs, _ = env.reset()
            cur = ([], [], [])
    env.close()
    return windows


def _agreement(ensemble, windows) -> dict[str, float]:
    """How the learned reward ranks segments against the true reward: pairwise agreement and Pearson r of segment
    returns, Pearson r per step, and each reward's Pearson r with the action's squared norm per step (a learned
    reward that rises with effort where the true one falls is being exploited by vibrating)."""
    if len(windows) < 4:
        return {"segments": len(windows)}
    obs = np.stack([w[0] for w in windows])
    acts = np.stack([w[1] for w in windows])
    true = np.stack([w[2] for w in windows])
    n, t = true.shape
    learned = np.asarray(ensemble.predict_reward(obs.reshape(n * t, *obs.shape[2:]),
                                                 acts.reshape(n * t, *acts.shape[2:]))).reshape(n, t)
    lr, tr = learned.sum(1), true.sum(1)
    i, j = np.triu_indices(n, 1)
    differ = tr[i] != tr[j]
    agree = float(np.mean(np.sign(lr[i] - lr[j])[differ] == np.sign(tr[i] - tr[j])[differ]))
    effort = (acts.reshape(n * t, -1) ** 2).sum(1)  # |a|^2 per step: what a control cost charges for
    return {"segments": n, "pair_agreement": agree, "segment_r": float(np.corrcoef(lr, tr)[0, 1]),
            "step_r": float(np.corrcoef(learned.ravel(), true.ravel())[0, 1]),
            "learned_vs_action_sq_r": float(np.corrcoef(learned.ravel(), effort)[0, 1]),
            "true_vs_action_sq_r": float(np.corrcoef(true.ravel(), effort)[0, 1]),
            "true_segment_return_mean": float(tr.mean())}


def diagnose(run_dir: Path, frozen: bool) -> dict[str, Any]:
    """Why a prefs run lands where it does (module docstring), from its run directory."""
    import torch

    from agents.loop.control.config import PrefsConfig
    from agents.loop.control.segment_pairs import DATASET_FILE
    from agents.sb3.control import SB3Agent, algorithm_class
    from rewardmodels.ensemble import RewardEnsemble
    from rewardmodels.preferences import PreferenceDataset

    cfg = PrefsConfig.load(run_dir)
    ckpt = run_dir / "checkpoints" / json.loads((run_dir / "checkpoints" / "latest.json").read_text())["checkpoint"]
    ensemble = RewardEnsemble.load(ckpt / RewardEnsemble.checkpoint_name)
    dataset = PreferenceDataset.load(ckpt / DATASET_FILE)
    model = algorithm_class(cfg.algo).load(ckpt / "agent.zip", device="cpu")
    seg = cfg.segment_len
    policy = _rollout_segments(cfg.env_id, lambda o: model.predict(o, deterministic=True)[0], seg, 5_000, 20_000)
    random = _rollout_segments(cfg.env_id, None, seg, 5_000, 20_001)
    ret_a, ret_b = dataset.true_returns()
    labelled = np.concatenate([ret_a, ret_b])
    final = np.array([w[2].sum() for w in policy]) if policy else np.zeros(0)
    out: dict[str, Any] = {
        "success": success_rate(model, cfg.env_id, cfg.eval_episodes),
        "final_policy": _agreement(ensemble, policy), "random_policy": _agreement(ensemble, random),
        "labelled_segment_return": {"mean": float(labelled.mean()), "p90": float(np.percentile(labelled, 90)),
                                    "max": float(labelled.max())},
        # the share of the final policy's segments better than every segment a label ever saw
        "final_segments_beyond_labels": float(np.mean(final > labelled.max())) if len(final) else None,
    }
    if frozen:
        torch.manual_seed(cfg.seed)
        agent = SB3Agent(cfg.algo, cfg.env_id, ensemble.predict_reward, total_steps=cfg.steps, seed=cfg.seed,
                         device="cpu", hyperparams=cfg.hyperparams)
        try:
            agent.learn(cfg.steps, max_steps=cfg.steps)
            out["frozen_final_reward_return"] = float(np.mean(agent.evaluate(cfg.eval_episodes)))
        finally:
            agent.close()
    return out


def run_one(env_id: str, seed: int, side: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side of one (env, seed), in this process."""
    import torch

    from agents.loop import run_prefs
    from agents.rundir import prepare_out

    torch.set_num_threads(args.threads)
    row = budget(env_id, args.table, args.steps, args.algo)
    cfg = prefs_config(env_id, seed, args.labels, row, args.eval_episodes, json.loads(args.set), args.preset)
    run_dir = Path(args.out) / f"{env_id}-seed{seed}"
    if side == "prefs":
        summary = run_prefs(cfg, prepare_out(run_dir / "prefs", overwrite=True))  # an interrupted try: aside
        result = {k: summary[k] for k in ("true_return_mean", "true_return_std", "env_steps", "wall_s", "cpu_s",
                                          "labels_used")}
        result["diagnose"] = diagnose(run_dir / "prefs", args.frozen)
        result["success"] = result["diagnose"].pop("success")
    else:
        result = run_rl(cfg, row["steps"])
    return {"env": env_id, "seed": seed, "side": side, "algo": cfg.algo, "steps": row["steps"], **result}


def _job(env_id: str, seed: int, side: str, args: argparse.Namespace, passthrough: list[str]) -> dict[str, Any]:
    path = Path(args.out) / f"{env_id}-seed{seed}" / f"{side}.json"
    if path.exists() and not args.redo:
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = Path(args.rl_from or "") / f"{env_id}-seed{seed}" / "rl.json"
    if side == "rl" and args.rl_from and earlier.exists():
        path.write_text(earlier.read_text())
        return json.loads(path.read_text())
    log = path.with_suffix(".log")
    cmd = [sys.executable, __file__, "--one", env_id, str(seed), side, *passthrough]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"{env_id} seed {seed} {side} failed (exit {proc.returncode}); see {log}")
    result = json.loads(path.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "diagnose"}), flush=True)
    return result


def summarise(rows: list[dict[str, Any]], randoms: dict[str, float]) -> tuple[dict[str, Any], str]:
    summary, lines = {}, ["| env | agent | steps | seeds | labels | learned reward | true reward | random | "
                          "return ratio | gain ratio | worst seed (gain ratio) |", "|" + "---|" * 11]
    for env_id, rand in randoms.items():
        by_seed: dict[int, dict[str, dict]] = {}
        for r in rows:
            if r["env"] == env_id:
                by_seed.setdefault(r["seed"], {})[r["side"]] = r
        pairs = [s for s in by_seed.values() if set(s) == set(SIDES)]
        if not pairs:
            continue
        p = float(np.mean([s["prefs"]["true_return_mean"] for s in pairs]))
        t = float(np.mean([s["rl"]["true_return_mean"] for s in pairs]))
        gains = [(s["prefs"]["true_return_mean"] - rand) / (s["rl"]["true_return_mean"] - rand) for s in pairs]
        ratio = p / t if t > 0 else float("nan")
        gain = (p - rand) / (t - rand) if t != rand else float("nan")
        first = pairs[0]["prefs"]
        summary[env_id] = {"agent": first["algo"], "steps": first["steps"], "seeds": len(pairs),
                           "labels": first["labels_used"], "prefs": p, "rl": t, "random": rand, "ratio": ratio,
                           "gain_ratio": gain, "worst_seed_gain_ratio": float(min(gains)),
                           "per_seed": {str(k): {sd: v[sd]["true_return_mean"] for sd in SIDES}
                                        for k, v in by_seed.items() if set(v) == set(SIDES)}}
        if all(s[sd].get("success") is not None for s in pairs for sd in SIDES):  # Meta-World
            summary[env_id].update({f"success_{sd}": float(np.mean([s[sd]["success"] for s in pairs]))
                                    for sd in SIDES})
        ratio_txt = f"{ratio:.2f}" if t > 0 and p > 0 else "n/a (returns < 0)"
        lines.append(f"| {env_id} | {first['algo'].upper()} | {first['steps']:,} | {len(pairs)} | "
                     f"{first['labels_used']} | {p:.1f} | {t:.1f} | {rand:.1f} | {ratio_txt} | {gain:.2f} | "
                     f"{min(gains):.2f} |")
    return summary, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(CPU_TABLE))
    parser.add_argument("--table", choices=("cpu", "full", "bpref"), default="cpu",
                        help="budgets: CPU_TABLE, 2M steps, or BPREF_TABLE (the B-Pref tasks; use with --preset "
                        "pebble or surf)")
    parser.add_argument("--rl-from", default=None, help="take the rl side of an (env, seed) from this earlier --out "
                        "where it has one (it does not depend on the labels or the prefs preset)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run, all envs (default: the table's)")
    parser.add_argument("--algo", choices=("ppo", "sac"), default=None, help="agent, all envs (default: the table's)")
    parser.add_argument("--labels", type=int, default=None, help="label budget (default: the preset's; 700 for "
                        "christiano-mujoco, PEBBLE's rate for pebble / surf)")
    parser.add_argument("--preset", default="christiano-mujoco",
                        help="the prefs side's preset, e.g. christiano-mujoco+pebble+surf (PEBBLE's pre-training and "
                        "SURF's reward learning added to the paper's protocol)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--set", default="{}", help="JSON of further PrefsConfig overrides (both sides), e.g. "
                        "'{\"schedule_c_steps\": 30000}'")
    parser.add_argument("--frozen", action="store_true", help="diagnose: train a fresh agent on each final reward")
    parser.add_argument("--redo", action="store_true", help="run again runs that already have results")
    parser.add_argument("--report", action="store_true", help="print the table of the runs of --envs and --seeds "
                        "that have finished in --out, and run nothing (a long table read while it runs)")
    parser.add_argument("--out", default="benchmarks/out/christiano_mujoco")
    parser.add_argument("--one", nargs=3, metavar=("ENV", "SEED", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        env_id, seed, side = args.one
        result = run_one(env_id, int(seed), side, args)
        path = Path(args.out) / f"{env_id}-seed{seed}" / f"{side}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        return
    if args.report:
        rows = [json.loads(p.read_text()) for e in args.envs for s in args.seeds for side in SIDES
                if (p := Path(args.out) / f"{e}-seed{s}" / f"{side}.json").exists()]
        print(summarise(rows, {e: random_return(e, args.eval_episodes) for e in args.envs})[1])
        return
    passthrough = ["--table", args.table, "--preset", args.preset,
                   "--eval-episodes", str(args.eval_episodes),
                   "--threads", str(args.threads), "--set", args.set, "--out", args.out]
    passthrough += ["--steps", str(args.steps)] if args.steps else []
    passthrough += ["--labels", str(args.labels)] if args.labels else []
    passthrough += ["--algo", args.algo] if args.algo else []
    passthrough += ["--frozen"] if args.frozen else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # longest first (SAC, then by steps), so the pool ends together
    jobs = sorted(((e, s, side) for e in args.envs for s in args.seeds for side in SIDES),
                  key=lambda j: (budget(j[0], args.table, args.steps, args.algo)["algo"] == "sac",
                                 budget(j[0], args.table, args.steps, args.algo)["steps"], j[2] == "prefs"),
                  reverse=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda j: _job(*j, args, passthrough), jobs))
    randoms = {e: random_return(e, args.eval_episodes) for e in args.envs}
    summary, table = summarise(rows, randoms)
    print("\n" + table)
    wall = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps({"summary": summary, "rows": rows, "args": vars(args),
                                                  "wall_s": wall}, indent=2))
    (out / "table.md").write_text(table + "\n")
    print(f"\nwall {wall:.0f} s; written: {out / 'results.json'}, {out / 'table.md'} (run directories alongside)")


if __name__ == "__main__":
    main()
