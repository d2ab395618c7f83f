import torch

from agents.llm.rollout import collect_rollout, left_pack, sequence_forward
from tests.agents.lm_fixtures import PROMPTS, make_env


def test_left_pack_right_aligns_tokens_and_drops_empty_columns():
    ids = torch.tensor([[0, 5, 6, 0, 0], [7, 8, 9, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    packed, pmask = left_pack(ids, mask)
    assert packed.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert pmask.tolist() == [[False, True, True], [True, True, True]]


def test_collect_rollout_shapes_masks_and_logprobs_match_a_full_forward():
    env = make_env(num_envs=8, max_new_tokens=6)
    rows = [PROMPTS[i % 3] for i in range(8)]
    batch = collect_rollout(env, prompts=rows, seed=0)
    b, t = batch.response_ids.shape
    assert b == 8 and 1 <= t <= 6
    assert batch.prompts == rows
    lengths = batch.response_mask.sum(1)
    # masks are a prefix of ones; an EOS ends exactly the rows flagged ended_with_eos
    assert torch.equal(batch.response_mask, torch.arange(t)[None] < lengths[:, None])
    eos = env.tokenizer.eos_token_id
    last = batch.response_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert torch.equal(batch.ended_with_eos, last == eos)
    assert bool(((lengths == 6) | batch.ended_with_eos).all())
    # the env's per-step log-probs (KV-cached) equal a full forward over the finished sequences
    logprobs, entropy, _ = sequence_forward(env.policy, *batch[:4])
    ref, _, _ = sequence_forward(env.ref_model, *batch[:4])
    torch.testing.assert_close(logprobs, batch.old_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, batch.ref_logprobs, atol=1e-5, rtol=0)
    assert bool((entropy[batch.response_mask] > 0).all())
    assert torch.equal(batch.kl_sum, ((batch.old_logprobs - batch.ref_logprobs) * batch.response_mask).sum(1))
    # the env decoded the same responses the reward saw
    words = [r.split() for r in batch.responses]
    assert all(len(w) <= 6 for w in words)


def test_batched_reference_logprobs_equal_the_envs_per_token_ones():
    rows = [PROMPTS[i % 4] for i in range(8)]
    with_ref = make_env(num_envs=8, kl_coef=0.1)
    without_ref = make_env(num_envs=8, kl_coef=0.0)
    a = collect_rollout(with_ref, prompts=rows, seed=0, generator=torch.Generator().manual_seed(3))
    b = collect_rollout(
        without_ref, prompts=rows, seed=0, generator=torch.Generator().manual_seed(3), ref_model=with_ref.ref_model
    )
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(b.ref_logprobs, a.ref_logprobs, atol=1e-5, rtol=0)
    # with neither an env reference nor ref_model, the KL is 0
    c = collect_rollout(without_ref, prompts=rows, seed=0)
    assert float(c.kl.abs().sum()) == 0.0


def test_rollout_batch_select_keeps_rows_aligned():
    env = make_env(num_envs=4)
    batch = collect_rollout(env, prompts=PROMPTS[:4], seed=1)
    sub = batch.select(torch.tensor([2, 0]))
    assert sub.prompts == [PROMPTS[2], PROMPTS[0]]
    assert torch.equal(sub.response_ids, batch.response_ids[[2, 0]])
