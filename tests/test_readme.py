"""The README's Python quickstarts run as written (budgets shrunk), and its commands name real CLI options."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SHRINK = {"learn(2048": "learn(64", "n_steps=256, batch_size=64": "n_steps=32, batch_size=16",
          "num_envs=64": "num_envs=2",
          "labels=60, steps=20_000, seed=1": "labels=8, steps=1_200, seed=1, rounds=1, initial_steps=300, "
                                             "eval_episodes=2, progress_bar=False",
          '"runs/inverted-pendulum"': '__import__("tempfile").mkdtemp()'}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
def test_python_quickstarts_run():
    blocks = python_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for code in blocks:  # later blocks reuse earlier imports, as a reader would
        for big, small in SHRINK.items():
            code = code.replace(big, small)
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["model"].num_timesteps >= 32 and namespace["info"]["policy_logprob"] < 0
    assert namespace["summary"]["labels_used"] == 8 and namespace["summary"]["preset"] == "christiano-mujoco"


def test_cli_options_in_the_readme_exist():
    import argparse
    import importlib

    from agents.cli import COMMANDS

    for line in re.findall(r"^rlhf-gym (\w[\w-]*) (.*)$", README, flags=re.M):
        command, rest = line
        assert command in COMMANDS, command
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[command][0]).add_parser(parser)
        known = {opt for action in parser._actions for opt in action.option_strings}
        for option in re.findall(r"(--[a-z][a-z-]*)", rest.split("#")[0]):
            assert option in known, f"rlhf-gym {command}: {option} is not an option"
