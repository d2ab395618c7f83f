import json

import pytest

from agents.llm.base import EnvCapabilityError, LMAgent, LMAgentConfig, save_checkpoint
from tests.agents.lm_fixtures import make_env


def test_agent_rejects_a_non_textgen_env():
    with pytest.raises(EnvCapabilityError, match="TextGenVectorEnv"):
        LMAgent(object(), LMAgentConfig())


def test_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        LMAgentConfig(learning_rate=0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        LMAgentConfig(iterations=0)


def test_save_checkpoint_replaces_atomically(tmp_path):
    env = make_env(num_envs=1)
    target = tmp_path / "last"
    save_checkpoint(target, env.policy, env.tokenizer, {}, {"iteration": 1})
    save_checkpoint(target, env.policy, env.tokenizer, {}, {"iteration": 2})
    assert json.loads((target / "trainer_state.json").read_text())["iteration"] == 2
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary leftovers
