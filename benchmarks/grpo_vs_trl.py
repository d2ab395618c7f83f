"""Our GRPO (``agents.grpo`` on the TextGen-v0 vector env) against TRL's ``GRPOTrainer``, side by side in one run.

Same tiny GPT-2 (same initial weights, loaded from one directory), same prompts, group size, completion length,
number of optimizer steps, learning rate, KL beta (k3 term in the loss), clip range, loss aggregation (token mean =
TRL's "dapo"), advantage scaling (group std), Adam epsilon, constant learning rate and reward function (the fraction
of response words equal to "good"). CPU, one torch thread. TRL: bf16=False, dropout disabled (ours never uses it).

Reported:
- tokens/s: completion tokens generated during training / wall time of training (rollouts + updates), both sides;
- final reward: mean reward of the last 5 training steps, and an identical post-training evaluation of both final
  policies (same sampler, same prompts, same seed).

    python benchmarks/grpo_vs_trl.py                 # defaults: 30 steps, G=8, 4 prompts/step, 16 tokens
    python benchmarks/grpo_vs_trl.py --steps 60 --out benchmarks/results/grpo_vs_trl.json

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


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def run_ours(path: Path, args) -> dict:
    from agents.grpo import GRPOAgent, GRPOConfig

    model, tokenizer = load(path)
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
        kl_coef=args.beta,
        clip_range=0.2,
        loss_aggregation="token-mean",
        scale_rewards=True,
        adam_eps=1e-5,
        seed=args.seed,
    )
    agent = GRPOAgent(env, config)
    means: list[float] = []
    start = time.perf_counter()
    agent.learn(args.steps, callback=lambda _a, _i, m: means.append(m["env/score_mean"]))
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
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            disable_dropout=True,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
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
        wall = time.perf_counter() - start
        model = trainer.model.eval()
    return {"model": model, "wall_s": wall, "tokens": reward.tokens, "rewards": reward.means}


@torch.no_grad()
def evaluate(model, tokenizer, args, n: int = 256) -> float:
    """Mean reward of ``n`` completions sampled by our env from ``model`` (same seed for every model)."""
    from agents.base import collect_rollout

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
    batch = collect_rollout(env, prompts=rows, seed=0, generator=torch.Generator().manual_seed(123))
    return float(batch.scores.mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (= rollouts) for both")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny-gpt2"
        build_model(path, args.n_layer, args.n_embd, args.seed)
        initial = evaluate(*load(path), args)
        torch.manual_seed(args.seed)
        ours = run_ours(path, args)
        torch.manual_seed(args.seed)
        trl = run_trl(path, args)
        tokenizer = ours["tokenizer"]
        ours_eval, trl_eval = evaluate(ours["model"], tokenizer, args), evaluate(trl["model"], tokenizer, args)
    ours_tps, trl_tps = ours["tokens"] / ours["wall_s"], trl["tokens"] / trl["wall_s"]
    results = {
        "settings": vars(args),
        "initial_reward": initial,
        "ours": {
            "tokens_per_s": ours_tps,
            "wall_s": ours["wall_s"],
            "completion_tokens": ours["tokens"],
            "final_train_reward": float(np.mean(ours["rewards"][-5:])),
            "final_eval_reward": ours_eval,
        },
        "trl": {
            "tokens_per_s": trl_tps,
            "wall_s": trl["wall_s"],
            "completion_tokens": trl["tokens"],
            "final_train_reward": float(np.mean(trl["rewards"][-5:])),
            "final_eval_reward": trl_eval,
        },
        "speed_ratio": ours_tps / trl_tps,
    }
    print(
        f"GRPO, {args.steps} steps x {args.prompts_per_step} prompts x G={args.group_size}, "
        f"{args.max_new_tokens} new tokens, CPU, 1 thread (initial reward {initial:.3f})"
    )
    print(
        f"{'':6s} {'tokens/s':>10s} {'wall s':>8s} {'tokens':>8s} {'train reward (last 5)':>22s} {'eval reward':>12s}"
    )
    for name in ("ours", "trl"):
        r = results[name]
        print(
            f"{name:6s} {r['tokens_per_s']:10.0f} {r['wall_s']:8.1f} {r['completion_tokens']:8d} "
            f"{r['final_train_reward']:22.3f} {r['final_eval_reward']:12.3f}"
        )
    print(
        f"speed ratio ours/TRL: {results['speed_ratio']:.2f}x (target >= 2); final eval reward ours - TRL: "
        f"{ours_eval - trl_eval:+.3f} (target >= 0)"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
