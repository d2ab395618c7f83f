"""Data parallelism on accelerate: 2 real CPU processes (gloo) started by ``accelerate launch`` end with the
parameters of one process trained on the combined batch (DPO and GRPO, with gradient accumulation on top, and the LM
reward model)."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from agents.llm import GRPOAgent, GRPOConfig
from tests.agents.llm import ddp_worker
from tests.agents.lm_fixtures import make_env

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rollout(path: Path) -> None:
    """One GRPO rollout of the combined batch (all groups), the input of every run."""
    env = make_env(num_envs=ddp_worker.GROUPS * ddp_worker.GROUP_SIZE, kl_coef=0.0)
    agent = GRPOAgent(env, GRPOConfig(group_size=ddp_worker.GROUP_SIZE, prompts_per_step=ddp_worker.GROUPS))
    batch = agent.collect()
    assert float(batch.scores.std()) > 0  # a learning signal to share
    torch.save(tuple(batch), path)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    _rollout(tmp_path / "batch.pt")
    # accelerate's --cpu flag starts ONE process unless MPI is set up; its torchrun launcher (--multi_gpu) with
    # ACCELERATE_USE_CPU starts N processes that Accelerator() joins in a gloo group on the CPU.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1"}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(ROOT / "tests" / "agents" / "llm" / "ddp_worker.py"), str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(tmp_path / "batch.pt", single / "batch.pt")
    ddp_worker.run(single)  # this process: WORLD_SIZE unset, the whole batch, no accumulation

    for run in ("dpo", "grpo", "rm"):
        one = torch.load(single / f"{run}_rank0.pt")
        initial = ddp_worker.params(ddp_worker._rm() if run == "rm" else make_env(num_envs=1).policy)
        assert any(not torch.equal(one[k], initial[k]) for k in one)  # training moved the weights
        for rank in (0, 1):
            two = torch.load(tmp_path / f"{run}_rank{rank}.pt")
            for k, v in one.items():
                # GPT-2's key bias has an exactly zero gradient (it shifts every score of a query alike), so AdamW
                # turns the two runs' rounding noise into steps of up to lr: a looser bound for it alone
                atol = 1e-4 if run == "rm" and k.endswith("attn.c_attn.bias") else 1e-5
                torch.testing.assert_close(two[k], v, atol=atol, rtol=1e-4, msg=f"{run} rank {rank}: {k}")
    one_log = torch.load(single / "rm_log_rank0.pt")
    assert len(one_log) == 6  # 2 epochs of minibatches 8, 8, 1
    for rank in (0, 1):  # every process logs the combined minibatch's loss
        two_log = torch.load(tmp_path / f"rm_log_rank{rank}.pt")
        assert [m["rm/loss"] for m in two_log] == pytest.approx([m["rm/loss"] for m in one_log], rel=1e-4, abs=1e-6)
    r0, r1 = (torch.load(tmp_path / f"grpo_learn_rank{r}.pt") for r in (0, 1))
    for k, v in r0.items():  # each process rolled out different groups; the replicas stayed identical
        torch.testing.assert_close(r1[k], v, atol=0, rtol=0, msg=k)
