#!/usr/bin/env bash
# Christiano et al. 2017 at full budgets: the MuJoCo table (2M env steps per run) and an Atari agent on its learned
# reward (the christiano-atari preset's 50M env steps, 5,500 labels). Not run here: the CPU tables in
# benchmarks/RESULTS.md are the 2-core versions of these two commands.
#
#   bash benchmarks/christiano_full.sh mujoco [JOBS]      # 7 envs x 3 seeds x {learned, true reward}: 42 processes
#   bash benchmarks/christiano_full.sh atari  [GAME]      # learned reward vs game score, one seed, on CUDA
#
# Expected wall time (estimated from the per-step costs measured on this project's CPU runs, not measured at this
# scale): mujoco, JOBS=16 on a 16-core machine: ~3 h (a 2M-step PPO run ~35 min per core; the 2M-step SAC runs of
# HalfCheetah ~3 h each, in parallel); atari: ~10 h per side on one GPU (A2C at ~2-3k env steps/s; the reward CNN
# processes 1 label per 10 env steps, 5M labels x 50 frames), both sides at once. Results and plots land in
# benchmarks/out/christiano_full/; both scripts resume an interrupted run where it stopped (finished runs are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/out/christiano_full
case "${1:-}" in
    mujoco)
        python benchmarks/christiano_mujoco.py --table full --seeds 0 1 2 --jobs "${2:-16}" --out "$OUT/mujoco" ;;
    atari)
        python benchmarks/christiano_atari_agent.py --full --game "${2:-ALE/Pong-v5}" --steps 50000000 \
            --set '{"device": "cuda"}' --eval-episodes 20 --out "$OUT/atari" ;;
    *)
        echo "usage: bash benchmarks/christiano_full.sh mujoco [JOBS] | atari [GAME]" >&2
        exit 2 ;;
esac
