"""SB3 PPO / SB3 A2C against the native PPO / GRPO on one TextGen-v0 configuration and one budget, in one run.

Every algorithm runs the same pipeline (``rlhf-gym text``): the default LM, the same labelled pairs and learned reward
model (same seed), the same env settings (KL coefficient, lengths, prompts) and the same budget in generated tokens
(``iterations * num_envs * max_new_tokens``). Prints final reward, oracle score, KL and wall-clock per algorithm,
and the wall-clock ratios against native PPO of the policy-improvement stage.

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


def final_reward(run_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    scores = [r["env/score_mean"] for r in rows if "env/score_mean" in r]
    return scores[-1] if scores else None


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
        rows.append({
            "algo": algo,
            "final_reward": final_reward(result.run_dir.path),
            "oracle_before": s["oracle_score_before"],
            "oracle_after": s["oracle_score_after"],
            "kl_to_ref": s["kl_to_ref"],
            "improve_s": s.get("improve_wall_s", float("nan")),
            "wall_s": s["wall_s"],
            "tokens": config.iterations * config.num_envs * config.max_new_tokens,
        })
        print(json.dumps(rows[-1]), flush=True)

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
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
