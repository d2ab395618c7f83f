"""SB3 PPO / SB3 A2C against the native PPO / GRPO on one TextGen-v0 configuration and one budget, in one run.

Every algorithm runs the same pipeline (``rlhf-gym text``): the default LM, the same labelled pairs and learned reward
model (same seed), the same env settings (KL coefficient, lengths, prompts) and the same budget in generated tokens
(``iterations * num_envs * max_new_tokens``). Prints final reward, oracle score, KL and wall-clock per algorithm,
and the wall-clock ratios against native PPO of the policy-improvement stage: for the whole budget, and to the same
improvement (the first time the learned reward of the training episodes, averaged over 3 consecutive rollouts,
reaches native PPO's final level, the mean of its last 3; ``time/improve_s`` on the curves).

    python benchmarks/sb3_vs_native.py --iterations 20 --out benchmarks/out/sb3_vs_native
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.loop.text.run import TextRLHFConfig, run_text_rlhf  # noqa: E402
from agents.rundir import prepare_out

ALGOS = ("sb3-ppo", "sb3-a2c", "ppo", "grpo")


WINDOW = 3  # rollouts averaged before a curve counts as having reached a reward (one rollout is noisy)


def reward_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(improvement seconds, learned reward of the rollout's finished episodes), per rollout."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["time/improve_s"], r["env/score_mean"]) for r in rows if "env/score_mean" in r and "time/improve_s" in r]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """When the mean reward of ``WINDOW`` consecutive rollouts first reaches ``target`` (None: never)."""
    window = min(WINDOW, len(curve))  # a budget of fewer rollouts than WINDOW: all of them
    for k in range(window - 1, len(curve)):
        if sum(score for _, score in curve[k - window + 1: k + 1]) / window >= target:
            return curve[k][0]
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="budget: iterations of num_envs episodes")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/sb3_vs_native")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for algo in args.algos:
        config = TextRLHFConfig.for_algo(algo, iterations=args.iterations, seed=args.seed, eval_every=0)
        result = run_text_rlhf(config, prepare_out(Path(args.out) / algo, overwrite=True))  # an earlier try: aside
        s = result.summary
        curve = reward_curve(result.run_dir.path)
        rows.append({
            "algo": algo,
            "final_reward": curve[-1][1] if curve else None,
            "curve": curve,
            "oracle_before": s["oracle_score_before"],
            "oracle_after": s["oracle_score_after"],
            "kl_to_ref": s["kl_to_ref"],
            "improve_s": s.get("improve_wall_s", float("nan")),
            "wall_s": s["wall_s"],
            "tokens": config.iterations * config.num_envs * config.max_new_tokens,
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)

    base = next((r["improve_s"] for r in rows if r["algo"] == "ppo"), None)
    print(f"\nbudget: {args.iterations} iterations x {config.num_envs} episodes x <={config.max_new_tokens} tokens; "
          f"seed {args.seed}; "
          f"torch threads {args.threads}; device cpu")
    print("| algo | final reward (learned RM) | oracle score before -> after | KL to ref | improve wall (s) "
          "| total wall (s) | improve time / native PPO |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["improve_s"] / base if base else float("nan")
        fr = "n/a" if r["final_reward"] is None else f"{r['final_reward']:+.3f}"
        print(f"| {r['algo']} | {fr} | {r['oracle_before']:+.3f} -> {r['oracle_after']:+.3f} | "
              f"{r['kl_to_ref']:.2f} | {r['improve_s']:.1f} | {r['wall_s']:.1f} | {ratio:.2f}x |")
    print_time_to_native(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))


def print_time_to_native(rows: list[dict]) -> None:
    """The improvement time each algorithm took to reach native PPO's final learned reward (module docstring)."""
    native = next((r for r in rows if r["algo"] == "ppo"), None)
    if native is None or not native["curve"]:
        return
    last = native["curve"][-WINDOW:]
    target = sum(score for _, score in last) / len(last)  # native PPO's final level (one rollout is noisy)
    base = time_to(native["curve"], target)
    print(f"\nto the same improvement: learned reward (mean of {WINDOW} rollouts) >= {target:+.3f}, native PPO's "
          f"final level (the mean of its last {WINDOW})")
    print("| algo | improve time to it (s) | / native PPO |")
    print("|---|---|---|")
    for r in rows:
        t = time_to(r["curve"], target)
        shown = "never" if t is None else f"{t:.1f}"
        ratio = "n/a" if t is None or not base else f"{t / base:.2f}x"
        print(f"| {r['algo']} | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
