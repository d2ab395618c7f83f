"""rlhf-gym's preference loop against imitation 1.0.1, side by side in one run, evaluated on the TRUE reward.

``--env CartPole-v1``: both at our CartPole protocol's budget (150 labels, 50k env steps, the same PPO settings,
segment length, share of labels up front and rounds; see ``IMITATION_CARTPOLE``). ``--env Pendulum-v1``: imitation's
documented Pendulum preference-comparisons example against our Pendulum preset, at the same label budget. Printed:
true return, wall-clock and CPU seconds, and the ratios.

imitation 1.0.1 pins gymnasium 0.29 / Stable-Baselines3 2.2, so it runs in its own virtual environment, created on
first use in benchmarks/out/imitation-venv with ``--system-site-packages`` (it reuses this machine's CPU torch 2.13
instead of downloading PyPI's multi-GB CUDA build; the venv's own gymnasium 0.29, SB3 2.2 and numpy<2 shadow the
system ones).

imitation's example is run as its tutorial (docs/tutorials/5_train_preference_comparisons.ipynb) gives it, with the
two settings the tutorial itself recommends for real results: ``num_iterations=60`` ("Set to 60 for better
performance") and ``learner.learn(100_000)`` ("set to 100000 to train a proficient expert"). ``--imitation-as-is``
runs the literal smoke-test values (5 iterations, 1000 learner steps) instead. Both sides are evaluated on 20
episodes (the tutorial uses 10).

    python benchmarks/prefs_vs_imitation.py --env CartPole-v1 --seeds 3
    python benchmarks/prefs_vs_imitation.py --env Pendulum-v1 --labels 200 --steps 40000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
VENV = OUT / "imitation-venv"
CACHE = OUT / "imitation_cache"

IMITATION_SCRIPT = r'''
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
import torch
torch.set_num_threads(1)
from imitation.algorithms import preference_comparisons
from imitation.policies.base import FeedForward32Policy, NormalizeFeaturesExtractor
from imitation.rewards.reward_nets import BasicRewardNet
from imitation.rewards.reward_wrapper import RewardVecEnvWrapper
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

seed, iterations, learner_steps, labels, episodes = (int(x) for x in sys.argv[1:6])
rng = np.random.default_rng(seed)
venv = make_vec_env("Pendulum-v1", rng=rng)
reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
fragmenter = preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng)
gatherer = preference_comparisons.SyntheticGatherer(rng=rng)
preference_model = preference_comparisons.PreferenceModel(reward_net)
reward_trainer = preference_comparisons.BasicRewardTrainer(
    preference_model=preference_model, loss=preference_comparisons.CrossEntropyRewardLoss(), epochs=3, rng=rng)
agent = PPO(policy=FeedForward32Policy,
            policy_kwargs=dict(features_extractor_class=NormalizeFeaturesExtractor,
                               features_extractor_kwargs=dict(normalize_class=RunningNorm)),
            env=venv, seed=seed, n_steps=2048 // venv.num_envs, batch_size=64, ent_coef=0.01, learning_rate=2e-3,
            clip_range=0.1, gae_lambda=0.95, gamma=0.97, n_epochs=10)
trajectory_generator = preference_comparisons.AgentTrainer(
    algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.05, rng=rng)
pref_comparisons = preference_comparisons.PreferenceComparisons(
    trajectory_generator, reward_net, num_iterations=iterations, fragmenter=fragmenter,
    preference_gatherer=gatherer, reward_trainer=reward_trainer, fragment_length=100, transition_oversampling=1,
    initial_comparison_frac=0.1, allow_variable_horizon=False, initial_epoch_multiplier=4,
    query_schedule="hyperbolic")
pref_comparisons.train(total_timesteps=5_000, total_comparisons=labels)
pref_steps = int(agent.num_timesteps)
learned_reward_venv = RewardVecEnvWrapper(venv, reward_net.predict_processed)
learner = PPO(seed=seed, policy=FeedForward32Policy,
              policy_kwargs=dict(features_extractor_class=NormalizeFeaturesExtractor,
                                 features_extractor_kwargs=dict(normalize_class=RunningNorm)),
              env=learned_reward_venv, batch_size=64, ent_coef=0.01, n_epochs=10,
              n_steps=2048 // learned_reward_venv.num_envs, clip_range=0.1, gae_lambda=0.95, gamma=0.97,
              learning_rate=2e-3)
learner.learn(learner_steps)
returns, _ = evaluate_policy(learner.policy, venv, episodes, return_episode_rewards=True)
print("RESULT " + json.dumps({
    "true_return_mean": float(np.mean(returns)), "true_return_std": float(np.std(returns)),
    "labels_used": int(len(pref_comparisons.dataset)), "env_steps": pref_steps + int(learner.num_timesteps),
    "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))
'''


# CartPole-v1 at our protocol's budget: the same labels (150), the same env steps (50k, preference learning and policy
# learning in one run: imitation's agent trains inside PreferenceComparisons), the same PPO settings (rl-zoo's
# CartPole PPO, which our preset uses), the same share of labels up front (0.4) and number of rounds (24), and
# an exact teacher on both sides (imitation's SyntheticGatherer with temperature 0; ours: the oracle). CartPole's
# episodes end at different times, so imitation must allow variable horizons. It cuts fragments only inside the
# trajectories it samples for a round (2 x pairs x fragment length x transition_oversampling steps): with its default
# oversampling of 1, a round that asks few pairs samples too few steps and stops the run ("No trajectories are long
# enough for the desired fragment length"; seeds 0 and 1 at lengths 20 and 50), so it samples 5x here. Ours pad a
# segment past its episode's end (the absorbing state), which is how the labels learn that ending early is worse.
IMITATION_CARTPOLE = r'''
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
import torch
torch.set_num_threads(1)
from imitation.algorithms import preference_comparisons
from imitation.rewards.reward_nets import BasicRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

seed, labels, steps, episodes = (int(x) for x in sys.argv[1:5])
rng = np.random.default_rng(seed)
venv = make_vec_env("CartPole-v1", n_envs=8, rng=rng)
reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
fragmenter = preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng)
gatherer = preference_comparisons.SyntheticGatherer(temperature=0, rng=rng)
preference_model = preference_comparisons.PreferenceModel(reward_net)
reward_trainer = preference_comparisons.BasicRewardTrainer(
    preference_model=preference_model, loss=preference_comparisons.CrossEntropyRewardLoss(), epochs=3, rng=rng)
agent = PPO("MlpPolicy", venv, seed=seed, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
            ent_coef=0.0, learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p)
trajectory_generator = preference_comparisons.AgentTrainer(
    algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.05, rng=rng)
pref_comparisons = preference_comparisons.PreferenceComparisons(
    trajectory_generator, reward_net, num_iterations=24, fragmenter=fragmenter, preference_gatherer=gatherer,
    reward_trainer=reward_trainer, fragment_length=20, transition_oversampling=5, initial_comparison_frac=0.4,
    allow_variable_horizon=True, initial_epoch_multiplier=4, query_schedule="hyperbolic")
pref_comparisons.train(total_timesteps=steps, total_comparisons=labels)
returns, _ = evaluate_policy(agent.policy, make_vec_env("CartPole-v1", n_envs=1, rng=np.random.default_rng(10_000)),
                             episodes, return_episode_rewards=True)
print("RESULT " + json.dumps({
    "true_return_mean": float(np.mean(returns)), "true_return_std": float(np.std(returns)),
    "labels_used": int(len(pref_comparisons.dataset)), "env_steps": int(agent.num_timesteps),
    "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))
'''


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import imitation, gymnasium; assert imitation.__version__ == '1.0.1'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} (imitation 1.0.1, gymnasium 0.29, SB3 2.2) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "imitation==1.0.1", "numpy<2"], check=True)
    subprocess.run(probe, check=True)
    return python


def _result(proc: subprocess.CompletedProcess, what: str) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    last = next((line for line in reversed(proc.stderr.splitlines()) if "Error" in line), "")
    raise RuntimeError(f"{what} printed no RESULT line (exit code {proc.returncode}): {last.strip()}")


def run_imitation(python: Path, seed: int, args) -> dict:
    if args.env == "CartPole-v1":
        script, argv = OUT / "imitation_cartpole.py", [seed, args.labels, args.steps, args.episodes]
        script.write_text(IMITATION_CARTPOLE)
    else:
        iterations, learner_steps = (5, 1_000) if args.imitation_as_is else (60, 100_000)
        script, argv = OUT / "imitation_pendulum.py", [seed, iterations, learner_steps, args.labels, args.episodes]
        script.write_text(IMITATION_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), str(script), *map(str, argv)], capture_output=True, text=True, env=env,
                          cwd=OUT)
    res = _result(proc, "imitation")
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def cached_imitation(python: Path, seed: int, args) -> dict:
    """imitation's result for ``seed``: re-run, or with ``--reuse-imitation`` read from the cache when present."""
    path = CACHE / f"{args.env}-seed{seed}-{'as-is' if args.imitation_as_is else 'tutorial'}-{args.labels}.json"
    if args.reuse_imitation and path.is_file():
        res = json.loads(path.read_text())
        print(f"(imitation seed {seed}: reusing {path.relative_to(ROOT)}, measured {res.get('measured_at', '?')})")
        return res
    res = run_imitation(python, seed, args)
    res["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    return res


def run_ours(env_id: str, seed: int, labels: int, steps: int, episodes: int, rounds: int | None,
             hyperparams: dict | None, round_evals: bool = False) -> dict:
    out = OUT / f"ours-{env_id}-seed{seed}"
    code = (
        "import json, time, torch; t0, c0 = time.perf_counter(), time.process_time(); torch.set_num_threads(1)\n"
        "from agents.loop import PrefsConfig, run_prefs\n"
        f"s = run_prefs(PrefsConfig.for_env({env_id!r}, seed={seed}, labels={labels}, steps={steps}, "
        f"rounds={rounds!r}, hyperparams={hyperparams!r}, eval_episodes={episodes}, progress_bar=False"
        f"{'' if round_evals else ', eval_every=0'}), "
        f"{str(out)!r})\n"
        "s.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)\n"
        "print('RESULT ' + json.dumps(s))\n"
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    res = _result(proc, "rlhf-gym")
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1", choices=("Pendulum-v1", "CartPole-v1"),
                        help="Pendulum-v1: imitation's tutorial; CartPole-v1: both sides at our protocol's budget")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per library (0 .. seeds-1)")
    parser.add_argument("--labels", type=int, default=None, help="label budget of both (default: our preset's)")
    parser.add_argument("--steps", type=int, default=None, help="env-step budget (default: our preset's)")
    parser.add_argument("--rounds", type=int, default=None, help="our loop rounds (default: our preset's)")
    parser.add_argument("--hyperparams", type=json.loads, default=None,
                        help="our SB3 kwargs as JSON (default: the preset's SAC settings)")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes on the true reward")
    parser.add_argument("--reuse-imitation", action="store_true",
                        help="reuse imitation's result for a seed from an earlier run of this script on this machine "
                             f"({CACHE.relative_to(ROOT)}/), instead of re-running its ~10 CPU minutes")
    parser.add_argument("--round-evals", action="store_true",
                        help="keep our loop's evaluations during training (5 episodes every 4 rounds, for the "
                             "curves); off by default because imitation evaluates only at the end, so both sides "
                             "do the same work: train, then evaluate on --episodes")
    parser.add_argument("--imitation-as-is", action="store_true",
                        help="imitation's literal smoke-test settings (5 iterations, 1000 learner steps)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    python = ensure_venv()
    sys.path.insert(0, str(ROOT))
    from agents.loop.control.presets import TUNED_PER_ENV

    args.labels = args.labels or TUNED_PER_ENV[args.env]["labels"]
    args.steps = args.steps or TUNED_PER_ENV[args.env]["steps"]
    rows = []
    for seed in range(args.seeds):
        for name, fn in (("imitation 1.0.1", lambda s=seed: cached_imitation(python, s, args)),
                         ("rlhf-gym", lambda s=seed: run_ours(args.env, s, args.labels, args.steps, args.episodes,
                                                              args.rounds, args.hyperparams,
                                                              args.round_evals))):
            try:
                res = fn()
            except RuntimeError as err:  # imitation stops on some seeds at CartPole's budget: report, go on
                rows.append((name, seed, {"error": str(err)}))
                print(f"{name:16s} seed {seed}: FAILED: {err}", flush=True)
                continue
            rows.append((name, seed, res))
            print(f"{name:16s} seed {seed}: return {res['true_return_mean']:8.1f} +- {res['true_return_std']:6.1f}"
                  f"  labels {res['labels_used']:4d}  steps {res['env_steps']:7d}  wall {res['wall_s']:7.1f} s"
                  f"  cpu {res['cpu_s']:7.1f} s", flush=True)
    mean = {}
    for name in ("imitation 1.0.1", "rlhf-gym"):
        sel = [r for n, _, r in rows if n == name and "error" not in r]
        if not sel:
            print(f"{name}: no run finished")
            return 1
        mean[name] = {k: sum(r[k] for r in sel) / len(sel) for k in ("true_return_mean", "wall_s", "cpu_s")}
        mean[name]["finished"] = f"{len(sel)} of {args.seeds}"
    imi, ours = mean["imitation 1.0.1"], mean["rlhf-gym"]
    print("\n| library | runs finished | true return (mean over them) | wall s | cpu s |\n|---|---|---|---|---|")
    for name, m in mean.items():
        print(f"| {name} | {m['finished']} | {m['true_return_mean']:.1f} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} |")
    print(f"\nwall-clock ratio rlhf-gym / imitation: {ours['wall_s'] / imi['wall_s']:.3f}  "
          f"(cpu ratio {ours['cpu_s'] / imi['cpu_s']:.3f}); return difference "
          f"{ours['true_return_mean'] - imi['true_return_mean']:+.1f}")
    ok = ours["true_return_mean"] >= imi["true_return_mean"] and ours["cpu_s"] <= imi["cpu_s"]
    print("higher return and less CPU time than imitation:", "yes" if ok else "no")
    (OUT / f"prefs_vs_imitation-{args.env}.json").write_text(json.dumps({"rows": rows, "mean": mean}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
