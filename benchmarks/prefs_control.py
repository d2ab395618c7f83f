"""The issue-3 result protocols of the preference loop on classic control, over 5 seeds, as a table.

* CartPole-v1: true_return_mean >= 475 with <= 150 labels and <= 50k env steps, in >= 4 of 5 seeds, each run < 3 min.
* Pendulum-v1: true_return_mean >= -200 with <= 200 labels and <= 40k env steps, in >= 4 of 5 seeds.

Each run is ``run_prefs(PrefsConfig.for_env(env, seed=s))`` (the same as ``rlhf-gym prefs --env ENV --seed S``) in
its own process with one torch thread, one after the other so that wall-clock times do not include each other.
``cpu s`` is the run's own CPU time: on a shared machine it is the steadier cost measure.

    python benchmarks/prefs_control.py                    # both envs, seeds 0-4
    python benchmarks/prefs_control.py --env CartPole-v1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "prefs_control"

#: env -> (return threshold, max labels, max env steps, max wall seconds or None)
PROTOCOLS = {
    "CartPole-v1": (475.0, 150, 50_000, 180.0),
    "Pendulum-v1": (-200.0, 200, 40_000, None),
}

RUN = (
    "import json, sys, time, torch; torch.set_num_threads(1)\n"
    "from agents.loop import PrefsConfig, run_prefs\n"
    "env, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
    "s = run_prefs(PrefsConfig.for_env(env, seed=seed, progress_bar=False), out)\n"
    "print('RESULT ' + json.dumps(s))\n"
)


def run_one(env: str, seed: int) -> dict:
    out = OUT / f"{env}-seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, env, str(seed), str(out)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["process_wall_s"] = time.perf_counter() - t0
            return res
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f"{env} seed {seed} failed (exit code {proc.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(PROTOCOLS), action="append", help="default: both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for env in args.env or list(PROTOCOLS):
        threshold, max_labels, max_steps, max_wall = PROTOCOLS[env]
        print(f"\n## {env}: return >= {threshold}, labels <= {max_labels}, steps <= {max_steps}"
              + (f", wall < {max_wall:.0f} s" if max_wall else ""), flush=True)
        print("| seed | true return | labels | env steps | wall s | cpu s | pass |\n|---|---|---|---|---|---|---|")
        rows = []
        for seed in args.seeds:
            r = run_one(env, seed)
            ok = (r["true_return_mean"] >= threshold and r["labels_used"] <= max_labels
                  and r["env_steps"] <= max_steps and (max_wall is None or r["wall_s"] < max_wall))
            r.update(seed=seed, passed=ok)
            rows.append(r)
            print(f"| {seed} | {r['true_return_mean']:.1f} +- {r['true_return_std']:.1f} | {r['labels_used']} | "
                  f"{r['env_steps']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {'yes' if ok else 'no'} |", flush=True)
        n_ok = sum(r["passed"] for r in rows)
        print(f"\n{env}: {n_ok}/{len(rows)} seeds pass (target: >= 4 of 5)")
        results[env] = rows
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
