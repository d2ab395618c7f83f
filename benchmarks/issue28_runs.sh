#!/usr/bin/env bash
# Issue 28's measurements (benchmarks/RESULTS.md, "PEBBLE, SURF and the B-Pref tasks"), one after the other on one
# core (each run in its own process, --jobs 1): the MuJoCo table with PEBBLE's pre-training and SURF's reward learning
# at 700 and at 175 labels on seeds 4-6 (none used while choosing settings), the unchanged preset on the same seeds
# for the tasks that missed, then one B-Pref row per task against SAC on the true reward. Resumable: finished runs are
# kept. The recorded runs ran these lines two at a time (one per core).
#   nohup bash benchmarks/issue28_runs.sh > benchmarks/out/issue28.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
OUT=benchmarks/out
python benchmarks/christiano_mujoco.py --preset christiano-mujoco+pebble+surf --seeds 4 5 6 --jobs 1 \
    --out $OUT/issue28-700
python benchmarks/christiano_mujoco.py --preset christiano-mujoco --seeds 4 5 6 --jobs 1 \
    --envs Reacher-v5 Swimmer-v5 Hopper-v5 --rl-from $OUT/issue28-700 --out $OUT/issue28-base
python benchmarks/christiano_mujoco.py --preset christiano-mujoco+pebble+surf --labels 175 --seeds 4 5 6 --jobs 1 \
    --rl-from $OUT/issue28-700 --out $OUT/issue28-175
python benchmarks/christiano_mujoco.py --table bpref --preset surf --seeds 4 --jobs 1 --out $OUT/issue28-bpref \
    --envs BPref/walker-walk-v0
for task in cheetah:cheetah-run-v0 quad:quadruped-walk-v0 button:button-press-v3; do
    python benchmarks/christiano_mujoco.py --table bpref --preset surf --seeds 4 --jobs 1 \
        --out "$OUT/issue28-bpref-${task%%:*}" --envs "BPref/${task#*:}"
done
