#!/usr/bin/env bash
# Issue 28's measurements, one after the other on one core (each run in its own process, --jobs 1): the MuJoCo table
# with PEBBLE's pre-training and SURF's reward learning at 700 and at 175 labels on seeds 4-6 (none used while
# choosing settings), then one B-Pref row per task against SAC on the true reward. Resumable: finished runs are kept.
#   nohup bash benchmarks/issue28_runs.sh > benchmarks/out/issue28.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
OUT=benchmarks/out
python benchmarks/christiano_mujoco.py --preset christiano-mujoco+pebble+surf --seeds 4 5 6 --jobs 1 \
    --out $OUT/issue28-700
python benchmarks/christiano_mujoco.py --preset christiano-mujoco+pebble+surf --labels 175 --seeds 4 5 6 --jobs 1 \
    --rl-from $OUT/issue28-700 --out $OUT/issue28-175
python benchmarks/christiano_mujoco.py --table bpref --preset surf --seeds 4 --jobs 1 --out $OUT/issue28-bpref \
    --envs BPref/walker-walk-v0 BPref/cheetah-run-v0 BPref/quadruped-walk-v0 BPref/button-press-v3
