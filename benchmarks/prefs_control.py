"""Robustness of the preference loop on classic control: the fraction of seeds that pass, the median and the worst.

* CartPole-v1: true_return_mean >= 475 with <= 150 labels and <= 50k env steps.
* Pendulum-v1: true_return_mean >= -150 with <= 100 labels and <= 20k env steps.

Each run is ``run_prefs(PrefsConfig.for_env(env, seed=s))`` (the same as ``rlhf-gym prefs --env ENV --seed S``) in
its own process, one after the other (wall-clock times do not include each other), at each torch thread count asked
for: ``1`` and ``default`` (torch's own choice for this machine). A result counts when it holds on every seed and
thread count, not on the best of them. ``cpu s`` is the run's own CPU time: on a shared machine the steadier cost.

    python benchmarks/prefs_control.py                                   # both envs, seeds 0-9, 1 and default threads
    python benchmarks/prefs_control.py --env CartPole-v1 --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "prefs_control"

#: env -> (return threshold, max labels, max env steps)
PROTOCOLS = {
    "CartPole-v1": (475.0, 150, 50_000),
    "Pendulum-v1": (-150.0, 100, 20_000),
}

RUN = (
    "import json, sys, torch\n"
    "threads = sys.argv[4]\n"
    "if threads != 'default': torch.set_num_threads(int(threads))\n"
    "from agents.loop import PrefsConfig, run_prefs\n"
    "env, seed, out, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[5])\n"
    "s = run_prefs(PrefsConfig.for_env(env, seed=seed, progress_bar=False, **overrides), out)\n"
    "s['torch_threads'] = torch.get_num_threads()\n"
    "print('RESULT ' + json.dumps(s))\n"
)


def run_one(env: str, seed: int, threads: str, overrides: dict) -> dict:
    out = OUT / f"{env}-seed{seed}-threads-{threads}"
    if out.exists():
        shutil.rmtree(out)
    environ = dict(os.environ)
    if threads == "default":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            environ.pop(var, None)
    else:
        environ["OMP_NUM_THREADS"] = threads
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, env, str(seed), str(out), threads, json.dumps(overrides)],
                          capture_output=True, text=True, cwd=ROOT, env=environ)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["process_wall_s"] = time.perf_counter() - t0
            return res
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f"{env} seed {seed} ({threads} threads) failed (exit code {proc.returncode})")


def summarize(rows: list[dict]) -> dict:
    returns = [r["true_return_mean"] for r in rows]
    return {"passed": sum(r["passed"] for r in rows), "seeds": len(rows), "median": statistics.median(returns),
            "worst": min(returns), "worst_seed": rows[returns.index(min(returns))]["seed"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(PROTOCOLS), action="append", help="default: both")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--threads", nargs="+", default=["1", "default"],
                        help="torch thread counts: integers and/or 'default' (default: 1 default)")
    parser.add_argument("--set", type=json.loads, default={}, metavar="JSON",
                        help="PrefsConfig overrides for a variant, e.g. '{\"label_until\": 0.8}' (default: none)")
    parser.add_argument("--out", type=Path, default=OUT / "results.json", help="where the JSON results go")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for env in args.env or list(PROTOCOLS):
        threshold, max_labels, max_steps = PROTOCOLS[env]
        for threads in args.threads:
            print(f"\n## {env}, {threads} torch thread(s): return >= {threshold}, labels <= {max_labels}, "
                  f"steps <= {max_steps}", flush=True)
            print("| seed | true return | labels | env steps | wall s | cpu s | pass |\n|---|---|---|---|---|---|---|")
            rows = []
            for seed in args.seeds:
                r = run_one(env, seed, threads, args.set)
                ok = (r["true_return_mean"] >= threshold and r["labels_used"] <= max_labels
                      and r["env_steps"] <= max_steps)
                r.update(seed=seed, passed=ok)
                rows.append(r)
                print(f"| {seed} | {r['true_return_mean']:.1f} +- {r['true_return_std']:.1f} | {r['labels_used']} | "
                      f"{r['env_steps']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {'yes' if ok else 'no'} |",
                      flush=True)
            s = summarize(rows)
            print(f"\n{env}, {threads} thread(s): {s['passed']}/{s['seeds']} seeds pass; median {s['median']:.1f}, "
                  f"worst {s['worst']:.1f} (seed {s['worst_seed']})", flush=True)
            results[f"{env} threads={threads}"] = {"summary": s, "overrides": args.set, "runs": rows}
            args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
