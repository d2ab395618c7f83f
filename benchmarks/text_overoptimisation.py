"""Reward over-optimisation on text, and when the online loop pays: gold and proxy against KL (Gao, Schulman & Hilton
2022, "Scaling Laws for Reward Model Overoptimization") for one-shot RLHF, online RLHF and best-of-n, at one label
budget, on seeds not used while choosing the setting.

The simulated teacher is the gold (it labels the runs); the LM reward model is the proxy. The setting, chosen by
reasoning and checked on one tuning seed (100) only:

* a harder teacher: VADER sentiment minus the share of repeated words (``--teacher-repetition-penalty 1``), so
  gushing by repetition loses, while the initial policy's samples, which the one-shot reward model is fitted on,
  rarely repeat: the proxy cannot know that repetition is bad;
* a small label budget (64 pairs) and long optimisation (150 GRPO iterations at a small KL coefficient, 0.01), so the
  policy leaves the initial distribution far behind.

Per seed: the one-shot run (every label on the initial policy), the online run (the same labels over 4 rounds, asked
on the current policy's completions) and best-of-n with the one-shot reward model (n = 2 .. 2^7; the same seed, so the
same labels and proxy). Compared at matched KL: the mean gold score over the KL bins (sqrt KL in steps of 1) both runs
reach, and the peak gold score of each run. Writes ``results.json``, ``table.md`` and the plot.

    python benchmarks/text_overoptimisation.py --seeds 0 1 2 3 4   # ~50 minutes on 2 cores, most of it best-of-n
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from agents.loop.text.config import TextRLHFConfig
from agents.loop.text.run import run_text_rlhf
from agents.rundir import prepare_out

SETTING = dict(algo="grpo", num_pairs=64, iterations=150, eval_every=10, kl_coef=0.01,
               teacher_repetition_penalty=1.0, progress_bar=False)
ONLINE_ROUNDS = 4
BON_DOUBLINGS = 7


def curve(run: Path) -> list[tuple[float, float, float]]:
    """(sqrt KL, gold, proxy) of every evaluation of a run after its start, in order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["eval/sqrt_kl"], r["eval/oracle_score"], r.get("eval/proxy_score", math.nan))
            for r in rows if "eval/oracle_score" in r and "eval/sqrt_kl" in r and r["step"] > 0]


def binned(points: list[tuple[float, float, float]]) -> dict[int, float]:
    """Mean gold per sqrt-KL bin [k, k + 1)."""
    bins: dict[int, list[float]] = {}
    for sqrt_kl, gold, _ in points:
        bins.setdefault(int(sqrt_kl), []).append(gold)
    return {k: float(np.mean(v)) for k, v in bins.items()}


def matched(a: list, b: list) -> tuple[float, float, int]:
    """Mean gold of ``a`` and of ``b`` over the sqrt-KL bins both reach, and how many bins that is."""
    ga, gb = binned(a), binned(b)
    common = sorted(set(ga) & set(gb))
    if not common:
        return math.nan, math.nan, 0
    return float(np.mean([ga[k] for k in common])), float(np.mean([gb[k] for k in common])), len(common)


def run_seed(seed: int, out: Path) -> dict:
    runs = {"one-shot": dict(rounds=1), "online": dict(rounds=ONLINE_ROUNDS),
            "best-of-n": dict(algo="bon", iterations=BON_DOUBLINGS, eval_every=1)}
    curves, summaries = {}, {}
    for name, extra in runs.items():
        cfg = TextRLHFConfig.for_algo(**{**SETTING, **extra, "seed": seed})
        start = time.perf_counter()
        result = run_text_rlhf(cfg, prepare_out(out / f"{name}-seed{seed}", overwrite=True))
        curves[name], summaries[name] = curve(result.run_dir.path), result.summary
        print(f"seed {seed} {name}: gold {result.summary['oracle_score_before']:+.3f} -> "
              f"{result.summary['oracle_score_after']:+.3f}, KL {result.summary['kl_to_ref']:.1f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    one, onl = curves["one-shot"], curves["online"]
    gold_one, gold_onl, n_bins = matched(one, onl)
    peak_one = max(g for _, g, _ in one)
    return {"seed": seed, "curves": curves,
            "one_shot": {"peak_gold": peak_one, "final_gold": one[-1][1], "final_kl": one[-1][0] ** 2,
                         "drop_from_peak": peak_one - one[-1][1], "proxy_rise": one[-1][2] - one[0][2]},
            "online": {"peak_gold": max(g for _, g, _ in onl), "final_gold": onl[-1][1], "final_kl": onl[-1][0] ** 2},
            "best_of_n": {"peak_gold": max(g for _, g, _ in curves["best-of-n"]),
                          "final_gold": curves["best-of-n"][-1][1]},
            "matched_kl": {"one_shot_gold": gold_one, "online_gold": gold_onl, "bins": n_bins,
                           "online_wins": bool(gold_onl > gold_one)}}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"one-shot": "tab:red", "online": "tab:blue", "best-of-n": "tab:green"}
    fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        for name, points in r["curves"].items():
            xs = [p[0] for p in points]
            label = name if r is results[0] else None
            gold_ax.plot(xs, [p[1] for p in points], color=colors[name], alpha=0.6, lw=1, label=label)
            proxy_ax.plot(xs, [p[2] for p in points], color=colors[name], alpha=0.6, lw=1, label=label)
    gold_ax.set(title="gold (the teacher that labelled) vs sqrt KL", xlabel="sqrt(KL to the initial policy)",
                ylabel="gold score")
    proxy_ax.set(title="proxy (the run's reward model) vs sqrt KL", xlabel="sqrt(KL to the initial policy)",
                 ylabel="proxy score (normalised)")
    for ax in (gold_ax, proxy_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"GRPO, {SETTING['num_pairs']} labels, repetition-penalised teacher; seeds "
                 f"{', '.join(str(r['seed']) for r in results)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = ["| seed | one-shot peak gold | one-shot final gold (KL) | drop from peak | online peak gold | "
             "online final gold (KL) | best-of-n peak gold | gold at matched KL, one-shot / online (bins) | "
             "online wins |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o, n, b, m = r["one_shot"], r["online"], r["best_of_n"], r["matched_kl"]
        lines.append(f"| {r['seed']} | {o['peak_gold']:+.3f} | {o['final_gold']:+.3f} ({o['final_kl']:.0f}) | "
                     f"{o['drop_from_peak']:+.3f} | {n['peak_gold']:+.3f} | {n['final_gold']:+.3f} "
                     f"({n['final_kl']:.0f}) | {b['peak_gold']:+.3f} | {m['one_shot_gold']:+.3f} / "
                     f"{m['online_gold']:+.3f} ({m['bins']}) | {'yes' if m['online_wins'] else 'no'} |")
    wins = [r["matched_kl"]["online_wins"] for r in results]
    margins = [r["matched_kl"]["online_gold"] - r["matched_kl"]["one_shot_gold"] for r in results]
    worst = results[int(np.argmin(margins))]["seed"]
    lines.append(f"\nOnline wins at matched KL on {sum(wins)} of {len(wins)} seeds; margin (online - one-shot) "
                 f"{np.mean(margins):+.3f} on average, worst seed {worst} ({min(margins):+.3f}). One-shot gold falls "
                 f"from its peak by {np.mean([r['one_shot']['drop_from_peak'] for r in results]):+.3f} on average "
                 f"(worst-case smallest drop {min(r['one_shot']['drop_from_peak'] for r in results):+.3f}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="benchmarks/out/text_overoptimisation")
    parser.add_argument("--plot", default="benchmarks/text_overoptimisation.png")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = [run_seed(seed, out) for seed in args.seeds]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    plot(results, Path(args.plot))
    print(text)
    return results


if __name__ == "__main__":
    main()
