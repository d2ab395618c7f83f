"""Our GRPO (``agents.llm.grpo`` on the TextGen-v0 vector env) against TRL's ``GRPOTrainer``, side by side in one run.

Same tiny GPT-2 (same initial weights, loaded from one directory), same prompts, group size, completion length,
number of optimizer steps, learning rate, KL beta (the k3 term in the loss, weighted by the policy ratio as TRL 1.16
does by default, ``use_bias_correction_kl``; ``--plain-k3`` turns that off on both sides), clip range, loss
aggregation (token mean = TRL's "dapo"), advantage scaling (group std), Adam epsilon, constant learning rate, gradient
clipping and reward function (the fraction of response words equal to "good"). CPU, one torch thread. TRL:
bf16=False, dropout disabled (ours never uses it).

Each seed builds its own initial model; both sides first run a short untimed warm-up (2 steps: one-off
initialisation of kernels and allocators), then the timed runs, in alternating order from seed to seed so that
neither side always runs first. Reported, per seed and over all seeds:

- tokens/s: completion tokens generated during training / wall time of training (rollouts + updates);
- final reward: mean training reward of the last 5 steps, and an identical post-training evaluation of both final
  policies (1,024 completions from our env, same prompts, same sampler seed).

    python benchmarks/grpo_vs_trl.py                 # defaults: seeds 0-4, 30 steps, G=8, 4 prompts/step, 16 tokens
    python benchmarks/grpo_vs_trl.py --seeds 0 --steps 60 --out benchmarks/out/grpo_vs_trl.json

Needs ``pip install trl`` (``rlhf-gym[benchmarks]``); everything stays offline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textenv import KeywordReward, TextGenVectorEnv  # noqa: E402
from textenv.testing import make_tiny_lm  # noqa: E402

PROMPTS = [
    "the movie was",
    "this book is",
    "i loved the",
    "the phone was",
    "we hated this",
    "the plot is",
    "it is",
    "the price was",
    "this film is",
    "the story was",
    "i hated the",
    "the acting was",
]
TARGET = "good"


class TrackedReward:
    """The shared reward function; records each call's mean reward and completion-token count (TRL side)."""

    def __init__(self):
        self.scorer = KeywordReward([TARGET], normalize=True)
        self.means: list[float] = []
        self.tokens = 0
        self.__name__ = "keyword_good"

    def __call__(self, prompts, completions, completion_ids=None, **_):
        scores = self.scorer(list(prompts), list(completions))
        self.means.append(float(np.mean(scores)))
        if completion_ids is not None:
            self.tokens += sum(len(ids) for ids in completion_ids)
        return scores.tolist()


def build_model(path: Path, n_layer: int, n_embd: int, seed: int) -> None:
    model, tokenizer = make_tiny_lm(n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=64, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load(path: Path, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).to(device).eval(), AutoTokenizer.from_pretrained(path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):  # the timer must not stop before the GPU does
        torch.cuda.synchronize()


def run_ours(path: Path, args) -> dict:
    from agents.llm.grpo import GRPOAgent, GRPOConfig

    model, tokenizer = load(path, args.device)
    env = TextGenVectorEnv(
        args.prompts_per_step * args.group_size,
        model=model,
        tokenizer=tokenizer,
        prompts=PROMPTS,
        reward_fn=KeywordReward([TARGET], normalize=True),
        kl_coef=0.0,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=8,
        array_backend="torch",
    )
    # env kl_coef=0: GRPO's KL is a loss term, so the reference log-probs come from one batched forward per rollout
    # (as TRL does) instead of a reference forward per token; the agent keeps a frozen copy of the initial policy.
    config = GRPOConfig(
        learning_rate=args.lr,
        group_size=args.group_size,
        prompts_per_step=args.prompts_per_step,
        beta=args.beta,
        clip_range=0.2,
        loss_aggregation="token-mean",
        scale_rewards=True,
        kl_ratio=not args.plain_k3,
        adam_eps=1e-5,
        seed=args.seed,
    )
    agent = GRPOAgent(env, config)
    means: list[float] = []
    start = time.perf_counter()
    agent.learn(args.steps, callback=lambda _a, _i, m: means.append(m["env/score_mean"]))
    _sync(args.device)
    wall = time.perf_counter() - start
    return {"model": model, "tokenizer": tokenizer, "wall_s": wall, "tokens": agent.tokens_seen, "rewards": means}


def run_trl(path: Path, args) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    reward = TrackedReward()
    rows = args.steps * args.prompts_per_step
    dataset = Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(rows)]})
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            adam_epsilon=1e-5,
            max_grad_norm=1.0,
            weight_decay=0.0,
            per_device_train_batch_size=args.prompts_per_step * args.group_size,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_generations=args.group_size,
            num_iterations=1,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=args.beta,
            use_bias_correction_kl=not args.plain_k3,
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            disable_dropout=True,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=args.device == "cpu",
            bf16=False,
            fp16=False,
            seed=args.seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=str(path),
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=load(path)[1],
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for quiet in (PrinterCallback, ProgressCallback):  # no per-step printing inside the timed region
            trainer.remove_callback(quiet)
        start = time.perf_counter()
        trainer.train()
        _sync(args.device)
        wall = time.perf_counter() - start
        model = trainer.model.eval()
    return {"model": model, "wall_s": wall, "tokens": reward.tokens, "rewards": reward.means}


@torch.no_grad()
def evaluate(model, tokenizer, args) -> float:
    """Mean reward of ``args.eval_completions`` completions sampled by our env from ``model`` (same seed for every
    model, generate's sampler)."""
    n = args.eval_completions
    from agents.llm.base import collect_rollout

    env = TextGenVectorEnv(
        n,
        model=model,
        tokenizer=tokenizer,
        prompts=PROMPTS,
        reward_fn=KeywordReward([TARGET], normalize=True),
        kl_coef=0.0,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=8,
        array_backend="torch",
    )
    rows = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(123)
    batch = collect_rollout(env, prompts=rows, seed=0, generator=gen)
    return float(batch.scores.mean())


def run_seed(args, seed: int) -> dict:
    """Warm-up, then the timed runs of both sides on one freshly built model; returns the seed's row."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny-gpt2"
        build_model(path, args.n_layer, args.n_embd, seed)
        initial = evaluate(*load(path, args.device), args)
        warm = argparse.Namespace(**{**vars(args), "steps": 2})
        runs = {"ours": run_ours, "trl": run_trl}
        order = ["ours", "trl"] if seed % 2 == 0 else ["trl", "ours"]
        for name in order:
            torch.manual_seed(seed)
            runs[name](path, warm)
        results = {}
        for name in order:
            torch.manual_seed(seed)
            results[name] = runs[name](path, args)
        tokenizer = load(path)[1]
        row = {"seed": seed, "initial_reward": initial, "first": order[0]}
        for name, r in results.items():
            row[name] = {
                "tokens_per_s": r["tokens"] / r["wall_s"],
                "wall_s": r["wall_s"],
                "completion_tokens": r["tokens"],
                "final_train_reward": float(np.mean(r["rewards"][-5:])),
                "final_eval_reward": evaluate(r["model"], tokenizer, args),
            }
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (= rollouts) for both")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument(
        "--plain-k3", action="store_true", help="both sides: the plain k3 KL term (no ratio weighting; DeepSeekMath)"
    )
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval-completions", type=int, default=1024, help="completions per final evaluation")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: both sides train and sample there")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"GRPO, {args.steps} steps x {args.prompts_per_step} prompts x G={args.group_size}, {args.max_new_tokens} new "
        f"tokens, KL {'plain k3' if args.plain_k3 else 'ratio-weighted k3'} beta {args.beta}, {args.device}, 1 thread"
    )
    print(
        f"{'seed':>4s} {'side':6s} {'tokens/s':>9s} {'wall s':>7s} {'tokens':>7s} {'train reward (last 5)':>22s} "
        f"{'eval reward':>12s}"
    )
    rows = []
    for seed in args.seeds:
        row = run_seed(args, seed)
        rows.append(row)
        for name in ("ours", "trl"):
            r = row[name]
            print(
                f"{seed:4d} {name:6s} {r['tokens_per_s']:9.0f} {r['wall_s']:7.2f} {r['completion_tokens']:7d} "
                f"{r['final_train_reward']:22.3f} {r['final_eval_reward']:12.3f}",
                flush=True,
            )
    total = {
        name: {
            "tokens_per_s": sum(r[name]["completion_tokens"] for r in rows) / sum(r[name]["wall_s"] for r in rows),
            "final_eval_reward": float(np.mean([r[name]["final_eval_reward"] for r in rows])),
            "final_train_reward": float(np.mean([r[name]["final_train_reward"] for r in rows])),
        }
        for name in ("ours", "trl")
    }
    ratios = [r["ours"]["tokens_per_s"] / r["trl"]["tokens_per_s"] for r in rows]
    diffs = np.array([r["ours"]["final_eval_reward"] - r["trl"]["final_eval_reward"] for r in rows])
    results = {
        "settings": vars(args),
        "seeds": rows,
        "ours": total["ours"],
        "trl": total["trl"],
        "speed_ratio": total["ours"]["tokens_per_s"] / total["trl"]["tokens_per_s"],
        "speed_ratio_per_seed": ratios,
        "eval_reward_diff_mean": float(diffs.mean()),
        "eval_reward_diff_sem": float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else None,
    }
    sem = results["eval_reward_diff_sem"]
    print(
        f"all seeds: tokens/s ours {total['ours']['tokens_per_s']:.0f} vs TRL {total['trl']['tokens_per_s']:.0f}; "
        f"speed ratio ours/TRL {results['speed_ratio']:.2f}x (per seed {', '.join(f'{x:.2f}' for x in ratios)}; "
        "target >= 2)"
    )
    print(
        f"mean final eval reward ours {total['ours']['final_eval_reward']:.4f} vs TRL "
        f"{total['trl']['final_eval_reward']:.4f}: ours - TRL {results['eval_reward_diff_mean']:+.4f}"
        + (f" (+- {sem:.4f} s.e.m. over seeds)" if sem is not None else "")
        + " (target >= 0)"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
