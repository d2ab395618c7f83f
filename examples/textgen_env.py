"""TextGen-v0 in five minutes: the token-level MDP, offline, with the default LM.

Plays episodes with the env's own next-token distribution (what a native agent does: no second forward pass for
the KL term), then a batch through the vector env, printing what the MDP hands back: per-token KL-shaped rewards,
the reward-function score at the end, and the decoded text.

    python examples/textgen_env.py
    python examples/textgen_env.py --episodes 2 --num-envs 4 --max-new-tokens 12
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import textenv  # noqa: F401 - registers TextGen-v0
from textenv import SentimentReward, sample_tokens


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the default LM is tiny: more threads only contend

    # -- the single env: gym.make works with no arguments; here we add a sentiment score and a KL coefficient
    # info_text=True: the prompt and response text in info too (off by default: TorchRL's readers take numbers only)
    env = gym.make("TextGen-v0", reward_fn=SentimentReward(), kl_coef=0.05, max_new_tokens=args.max_new_tokens,
                   info_text=True)
    print(f"action space {env.action_space}, observation {list(env.observation_space.spaces)} "
          f"of length {env.observation_space['input_ids'].shape[0]} (left-padded)")
    generator = torch.Generator().manual_seed(args.seed)
    returns = []
    for episode in range(args.episodes):
        obs, info = env.reset(seed=args.seed + episode)
        total, done = 0.0, False
        while not done:
            logits = env.unwrapped.next_token_logits()  # (V,) the acting policy's logits at this state
            action = int(sample_tokens(logits[None], generator)[0])
            obs, reward, terminated, truncated, info = env.step(action)  # reuses those logits for the KL term
            total += reward
            done = terminated or truncated
        returns.append(total)
        print(f"\nprompt:   {info['prompt']!r}\nresponse: {info['response']!r}")
        print(f"score {info['score']:+.3f}, summed KL {info['kl_sum']:.3f}, return {total:+.3f} "
              f"({'EOS' if terminated else 'truncated'})")
    env.close()

    # -- the vector env: the fast path (batched token state and KV caches on the model's device)
    venv = gym.make_vec("TextGen-v0", num_envs=args.num_envs, reward_fn=SentimentReward(),
                        max_new_tokens=args.max_new_tokens)
    obs, _ = venv.reset(seed=args.seed)
    finished: list[float] = []
    while len(finished) < args.num_envs:
        actions = venv.action_space.sample()  # any policy works; random tokens make poor reviews
        obs, rewards, terminated, truncated, info = venv.step(actions)
        ended = terminated | truncated  # info["score"] holds every row's score: 0 until its episode ends
        finished += [float(s) for s in np.asarray(info["score"])[ended]]
    venv.close()
    print(f"\nvector env: {len(finished)} random-token episodes, mean score {np.mean(finished):+.3f}")
    return {"episode_returns": returns, "vector_scores": finished}


if __name__ == "__main__":
    main()
