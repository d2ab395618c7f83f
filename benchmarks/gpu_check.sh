#!/usr/bin/env bash
# GPU readiness in one go (about 8 minutes on one GPU): the CUDA tests, then the GPU benchmark rows.
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/out/gpu_check/*.txt|json and prints a summary
#
# Each step has its own time limit, so that one slow or failing step leaves time for the others; the script goes on
# after a failure and exits non-zero at the end if any step failed. Nothing here needs the network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/out/gpu_check
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=()

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1; then
        echo "   ok in $((SECONDS - start))s"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start))s; last lines:"
        tail -n 15 "$OUT/$name.txt" | sed 's/^/   | /'
        failed+=("$name")
    fi
}

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA device visible to torch: nothing to check"
    exit 2
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

# 1. Every test marked cuda (env, decoders, each agent's step in fp32 and bf16, LoRA).
step cuda_tests 180 python -m pytest -q -p no:cacheprovider -m cuda tests

# 2. Rollout of the env vs generate (+ one batched reference forward), GPT-2-small-sized random model.
step rollout_gpt2_small 90 python benchmarks/rollout_vs_generate.py --device cuda --model gpt2-small \
    --batch 16 --tokens 64 --repeats 3

# 3. The same with a random Qwen2 of Qwen2-0.5B's shape (494M parameters).
if python benchmarks/rollout_vs_generate.py --help | grep -q "0.5b"; then
    step rollout_qwen2_0_5b 120 python benchmarks/rollout_vs_generate.py --device cuda --family qwen2 \
        --model 0.5b --batch 16 --tokens 64 --repeats 3
else
    echo "== rollout_qwen2_0_5b: skipped (benchmarks/rollout_vs_generate.py has no 0.5b model size)"
fi

# 4. GRPO against TRL's GRPOTrainer (one seed, short), if TRL is installed.
if python -c "import trl" 2>/dev/null; then
    step grpo_vs_trl 150 python benchmarks/grpo_vs_trl.py --device cuda --seeds 0 --steps 20 \
        --eval-completions 256 --out "$OUT/grpo_vs_trl.json"
else
    echo "== grpo_vs_trl: skipped (pip install trl)"
fi

# 5. LoRA vs full fine-tuning memory on the GPU (torch allocator peak), GPT-2-small-sized.
step lora_memory 120 python benchmarks/lora_memory.py --iterations 6 --out "$OUT/lora_memory.json"

echo
for f in rollout_gpt2_small rollout_qwen2_0_5b lora_memory; do
    [ -f "$OUT/$f.txt" ] && { echo "-- $f"; tail -n 8 "$OUT/$f.txt"; }
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED steps: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
