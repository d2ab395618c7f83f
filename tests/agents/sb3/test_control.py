import pytest

from agents.loop.control.presets import PREFS_PRESETS as LOOP_PRESETS
from agents.loop.control.presets import apply_preset
from agents.sb3.control import SB3_HYPERPARAMS, UnknownHyperparameterError, check_hyperparams


@pytest.mark.parametrize("algo, hyper, message", [
    ("ppo", {"n_step": 64}, "unknown ppo hyperparameter 'n_step'; did you mean n_steps?"),
    ("ppo", {"buffer_size": 10}, "unknown ppo hyperparameter 'buffer_size'"),  # a key of the off-policy algorithms
    ("sac", {"n_epochs": 3}, "unknown sac hyperparameter 'n_epochs'"),
    ("dqn", {"device": "cuda"}, "set by rlhf-gym itself; use --device"),
    ("a2c", {"env": "CartPole-v1"}, "set by rlhf-gym itself; drop it"),
    ("ppo", [["n_steps", 64]], "must be a JSON object"),
])
def test_unknown_hyperparameters_are_refused_with_the_closest_valid_keys(algo, hyper, message):
    with pytest.raises(UnknownHyperparameterError, match=message.replace("?", r"\?")):
        check_hyperparams(algo, hyper)


def test_every_shipped_preset_uses_only_valid_hyperparameters():
    for (algo, _env), hyper in SB3_HYPERPARAMS.items():
        check_hyperparams(algo, hyper)
    check_hyperparams("sac", {"n_envs": 2, "learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64]}})
    for name in LOOP_PRESETS:
        env = "ALE/Pong-v5" if "atari" in name else "Hopper-v5" if "mujoco" in name else "CartPole-v1"
        values = apply_preset(name, env, {})
        if values.get("hyperparams"):
            check_hyperparams(values.get("algo", "ppo"), values["hyperparams"])
