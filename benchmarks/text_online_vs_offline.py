"""Online vs one-shot text RLHF at the same label budget, on the default LM with the VADER sentiment teacher.

One-shot (``rounds=1``): every label on completions of the initial policy, one reward model, then the RL budget.
Online (``rounds=R``): the same labels spread over rounds (``initial_label_fraction`` up front, the rest asked on the
current policy's completions between improvement steps), the reward model refitted on all labels each round, the
same total RL iterations. Both through the one preference loop (``agents.loop.text.loop``), so only the schedule of
the labels differs. Reported per seed: the oracle (VADER) score gain on held-out prompts, the KL to the reference,
the win rate against the initial policy, and the head-to-head win rate of online over one-shot (the teacher judges
their completions for the same held-out prompts).

    python benchmarks/text_online_vs_offline.py                       # GRPO, 256 labels, 40 iterations, seeds 0 1 2
    python benchmarks/text_online_vs_offline.py --rounds 4 --pairs 128 --iterations 24 --seeds 0

Writes ``benchmarks/out/text_online_vs_offline/results.json`` and prints the markdown table of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.loop.text.run import TextRLHFConfig, run_text_rlhf
from agents.rundir import prepare_out
from rewardmodels.text.teachers import SentimentTeacher


def run_pair(args: argparse.Namespace, seed: int) -> dict:
    rows = {}
    results = {}
    for name, rounds in (("one-shot", 1), ("online", args.rounds)):
        cfg = TextRLHFConfig.for_algo(args.algo, seed=seed, num_pairs=args.pairs, iterations=args.iterations,
                                      rounds=rounds, eval_prompts=args.eval_prompts, progress_bar=False)
        out = Path(args.out) / f"{name}-seed{seed}"
        start = time.perf_counter()
        result = run_text_rlhf(cfg, prepare_out(out, overwrite=True))  # an earlier try: moved aside
        s = result.summary
        results[name] = result
        rows[name] = {"oracle_gain": s["oracle_score_gain"], "oracle_after": s["oracle_score_after"],
                      "kl_to_ref": s["kl_to_ref"], "win_rate_vs_ref": s["win_rate_vs_ref"],
                      "labels_used": s["labels_used"], "wall_s": time.perf_counter() - start}
        print(f"seed {seed} {name}: {json.dumps(rows[name])}", flush=True)
    online, oneshot = results["online"].after, results["one-shot"].after
    assert online.prompts == oneshot.prompts  # the same held-out prompts, row for row
    teacher = SentimentTeacher(seed=seed)
    rows["online_vs_one_shot_win_rate"] = float(np.nanmean(teacher.label(online.prompts, online.responses,
                                                                         oneshot.responses)))
    return rows


def table(per_seed: dict[int, dict]) -> str:
    lines = ["| seed | one-shot oracle gain | online oracle gain | one-shot KL | online KL | one-shot win rate vs ref "
             "| online win rate vs ref | online vs one-shot win rate | online gain >= one-shot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, r in per_seed.items():
        a, b = r["one-shot"], r["online"]
        better = "yes" if b["oracle_gain"] >= a["oracle_gain"] else "no"
        lines.append(f"| {seed} | {a['oracle_gain']:+.3f} | {b['oracle_gain']:+.3f} | {a['kl_to_ref']:.2f} | "
                     f"{b['kl_to_ref']:.2f} | {a['win_rate_vs_ref']:.2f} | {b['win_rate_vs_ref']:.2f} | "
                     f"{r['online_vs_one_shot_win_rate']:.2f} | {better} |")
    wins = sum(r["online"]["oracle_gain"] >= r["one-shot"]["oracle_gain"] for r in per_seed.values())
    lines.append(f"\nonline >= one-shot in {wins} of {len(per_seed)} seeds; worst seed's online - one-shot gain: "
                 f"{min(r['online']['oracle_gain'] - r['one-shot']['oracle_gain'] for r in per_seed.values()):+.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="grpo", choices=("ppo", "grpo", "rloo"))
    parser.add_argument("--pairs", type=int, default=256, help="label budget of both runs")
    parser.add_argument("--iterations", type=int, default=40, help="RL iterations of both runs")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the online run")
    parser.add_argument("--eval-prompts", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/out/text_online_vs_offline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the default LM is tiny: more threads only contend on a small CPU
    per_seed = {seed: run_pair(args, seed) for seed in args.seeds}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "seeds": per_seed}, indent=2))
    print(table(per_seed))
    return per_seed


if __name__ == "__main__":
    main()
