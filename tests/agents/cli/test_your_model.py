"""Your model, end to end, as a new user runs it: a tiny Llama checkpoint of your own, TRL-format data, every
algorithm with and without LoRA, SFT -> reward model -> RL from one command, and the defects users met (each test
here failed before its fix)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from agents.cli import main
from tests.agents.cli.test_text import PROMPTS, checkpoint, preference_file, prompt_file
from textenv.models import load_tokenizer

TINY = ["--iterations", "2", "--max-new-tokens", "4", "--eval-prompts", "2", "--samples", "0", "--no-progress",
        "--rm-ensemble", "1"]


def run_text(tmp_path, *flags, family="llama"):
    model_flags, _ = checkpoint(tmp_path, family)
    out = tmp_path / "run"
    argv = ["text", *model_flags, "--out", str(out), *TINY, *flags]
    assert main(argv) == 0
    return out, json.loads((out / "summary.json").read_text())


# -- the matrix: every algorithm x {full, LoRA}, the preference formats and labellers spread over it -------------
MATRIX = [(algo, lora, fmt) for algo in ("ppo", "grpo", "rloo", "dpo", "kto") for lora in (False, True)
          for fmt in (("standard", "conversational") if lora else ("teacher",))]


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "lora", "labels"), MATRIX)
def test_every_algorithm_with_and_without_lora_on_your_model(tmp_path, algo, lora, labels):
    if labels == "teacher":  # the simulated teacher labels completions of your model (it judges, named oracle)
        data = ["--prompts", str(prompt_file(tmp_path, False)), "--pairs", "8"]
    else:  # your preference file labels (a dataset): no simulated judge
        conv = labels == "conversational"
        data = ["--prompts", str(prompt_file(tmp_path, conv)), "--preferences", str(preference_file(tmp_path, conv))]
    lora_flags = ["--lora-r", "4"] if lora else []
    out, summary = run_text(tmp_path, "--algo", algo, *data, *lora_flags)
    assert summary["labels_used"] > 0 and summary["finished"]
    assert (out / "policy" / ("adapter_config.json" if lora else "model.safetensors")).exists()
    if labels == "teacher":
        assert "oracle_score_after" in summary and summary["judge"].startswith("teacher (labelled")
    else:
        assert not any(k.startswith(("oracle", "teacher", "win_rate_vs_ref")) for k in summary)
    assert (out / "reward_model").exists() == (algo in ("ppo", "grpo", "rloo"))


def test_lora_adapters_load_with_autopeft_from_another_directory(tmp_path):
    out, _ = run_text(tmp_path, "--algo", "grpo", "--lora-r", "4", "--prompts", str(prompt_file(tmp_path, False)),
                      "--preferences", str(preference_file(tmp_path, False)))
    config = json.loads((out / "policy" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    probe = ("from peft import AutoPeftModelForCausalLM; import sys; "
             f"m = AutoPeftModelForCausalLM.from_pretrained({str(out / 'policy')!r}); print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and "PeftModel" in done.stdout, done.stderr[-2000:]


def test_saved_reward_model_scores_a_batch_through_the_pipeline_as_the_toolkit(tmp_path):
    from transformers import pipeline

    from rewardmodels.text.lm_reward import LMRewardModel

    out, _ = run_text(tmp_path, "--algo", "grpo", "--prompts", str(prompt_file(tmp_path, False)),
                      "--preferences", str(preference_file(tmp_path, False)), family="qwen2")
    texts_p = ["the movie was", "i loved the plot and the music was fun"]
    texts_r = [" good", " bad bad bad awful"]
    ours = LMRewardModel.from_pretrained(out / "reward_model")(texts_p, texts_r)
    assert json.loads((out / "reward_model" / "tokenizer_config.json").read_text())["padding_side"] == "right"
    # The saved tokenizer loaded as saved (a real checkpoint's AutoTokenizer does this; for the word-level test
    # tokenizer next to a Qwen2 config, see tests/agents/cli/test_text.py checkpoint()).
    scorer = pipeline("text-classification", model=str(out / "reward_model"),
                      tokenizer=load_tokenizer(out / "reward_model"), function_to_apply="none", device="cpu")
    batch = scorer([p + r for p, r in zip(texts_p, texts_r, strict=True)], batch_size=2)  # one padded batch
    np.testing.assert_allclose([x["score"] for x in batch], torch.as_tensor(ours).numpy(), atol=1e-4)


def test_saved_datasets_are_read_as_prompts_and_preferences(tmp_path):
    datasets = pytest.importorskip("datasets")
    prefs = [json.loads(line) for line in preference_file(tmp_path, False).read_text().splitlines()]
    datasets.Dataset.from_list(prefs).save_to_disk(tmp_path / "prefs_ds")
    datasets.Dataset.from_dict({"prompt": PROMPTS}).save_to_disk(tmp_path / "prompts_ds")
    _, summary = run_text(tmp_path, "--algo", "dpo", "--prompts", str(tmp_path / "prompts_ds"),
                          "--preferences", str(tmp_path / "prefs_ds"))
    assert summary["labels_used"] == len(prefs)


def test_a_missing_model_fails_at_once_without_asking_the_hub(tmp_path, capsys, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a local path that does not exist must not reach for the hub")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["text", "--model", str(tmp_path / "no" / "such"), "--prompts", "p.txt", "--out",
                 str(tmp_path / "run")]) == 2
    assert "no such directory here" in capsys.readouterr().err


def test_with_your_data_no_sentiment_lexicon_judges(tmp_path):
    """--labeller dataset on your model: the reward model judges (named so), held-out pairs of your data measure it,
    and no VADER score appears anywhere in the report."""
    prefs = tmp_path / "many.jsonl"
    rows = [{"prompt": p, "chosen": "good great fun", "rejected": "bad awful boring"} for p in PROMPTS * 4]
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, summary = run_text(tmp_path, "--algo", "grpo", "--prompts", str(prompt_file(tmp_path, False)),
                            "--preferences", str(prefs))
    assert summary["judge"] == "reward model (the run's final fit)"
    assert 0 <= summary["heldout_preference_accuracy"] <= 1 and summary["heldout_pairs"] == round(32 * 0.15)
    assert summary["labels_used"] == 32 - summary["heldout_pairs"]  # held-out pairs never train anything
    assert not any("oracle" in k or "win_rate_vs_ref" == k for k in summary)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval/oracle_score" in r for r in rows)


def test_prompt_length_comes_from_the_data_and_errors_count_the_files_prompts(tmp_path, capsys):
    long = tmp_path / "long.txt"
    long.write_text("\n".join([*PROMPTS, "the movie was good and the plot is fun and the music was good too"]) + "\n")
    _, summary = run_text(tmp_path, "--algo", "dpo", "--prompts", str(long),
                          "--preferences", str(preference_file(tmp_path, False)))
    assert summary["finished"]  # no --max-prompt-tokens: the longest prompt sets it
    flags, _ = checkpoint(tmp_path, "llama")
    assert main(["text", *flags, "--prompts", str(long), "--preferences", str(preference_file(tmp_path, False)),
                 "--algo", "dpo", "--max-prompt-tokens", "4", "--out", str(tmp_path / "r2"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "prompt" in err and "of the run's 9 prompts are" in err and "9 of" not in err.split("(")[0]


def test_conversational_preferences_render_plain_prompts_as_user_turns(tmp_path, caplog):
    out, _ = run_text(tmp_path, "--algo", "grpo", "--prompts", str(prompt_file(tmp_path, False)),
                      "--preferences", str(preference_file(tmp_path, True)))
    assert "each prompt is given to the policy as a user turn" in caplog.text
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert all(p["prompt"].startswith("user :") for p in pairs)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["prompt_completion", "text", "messages"])
def test_sft_then_rl_from_one_command_starts_rl_from_the_sft_model(tmp_path, fmt):
    records = {"prompt_completion": [{"prompt": p, "completion": "good fun good"} for p in PROMPTS * 2],
               "text": [{"text": f"{p} good fun good"} for p in PROMPTS * 2],
               "messages": [{"messages": [{"role": "user", "content": p}, {"role": "assistant",
                                                                          "content": "good fun good"}]}
                            for p in PROMPTS * 2]}[fmt]
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in records))
    out, summary = run_text(tmp_path, "--algo", "grpo", "--sft-data", str(demos), "--sft-lr", "1e-2",
                            "--prompts", str(prompt_file(tmp_path, fmt == "messages")),
                            "--preferences", str(preference_file(tmp_path, fmt == "messages")))
    sft = json.loads((out / "sft" / "summary.json").read_text())
    assert sft["heldout_loss_after"] < sft["heldout_loss_before"]  # SFT lowered the held-out completion loss
    sft_model = AutoModelForCausalLM.from_pretrained(out / "sft" / "model")
    from agents.loop.text.config import TextRLHFConfig
    from agents.loop.text.loop import build_text_loop

    # The RL stage starts from the SFT model and keeps it as its reference: built again (the SFT stage is done, so
    # it is loaded, not rerun), the reference's weights are the SFT model's.
    _, agent = build_text_loop(TextRLHFConfig.load(out), tmp_path / "again")
    ref = agent.ctx.ref_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in sft_model.state_dict().items() if k in ref)
    assert summary["finished"]


def test_sft_command_then_text_on_its_model(tmp_path):
    model_flags, _ = checkpoint(tmp_path, "llama")
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": p, "completion": "good fun"}) + "\n" for p in PROMPTS * 2))
    assert main(["sft", *model_flags, "--data", str(demos), "--out", str(tmp_path / "sft"), "--epochs", "1",
                 "--lr", "1e-2"]) == 0
    tokenizer_flag = model_flags[model_flags.index("--tokenizer"):][:2]
    assert main(["text", "--model", str(tmp_path / "sft" / "model"), *tokenizer_flag, "--prompts",
                 str(prompt_file(tmp_path, False)), "--preferences", str(preference_file(tmp_path, False)),
                 "--algo", "dpo", "--out", str(tmp_path / "rl"), *TINY]) == 0


def test_verifiable_reward_functions_get_the_prompt_files_columns(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "target": "good" if i % 2 else "fun"}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    (tmp_path / "checks.py").write_text(
        "def says(prompts, completions, target, **kwargs):\n"
        "    return [float(t in c.split()) for c, t in zip(completions, target)]\n"
        "def length(prompts, responses):\n"
        "    return [len(r.split()) / 10 for r in responses]\n")
    out, summary = run_text(tmp_path, "--algo", "grpo", "--prompts", str(prompts), "--pairs", "0",
                            "--reward-fn", f"{tmp_path / 'checks.py'}:says", "--reward-fn",
                            f"{tmp_path / 'checks.py'}:length", "--reward-weights", "1", "0.5")
    assert summary["labels_used"] == 0 and summary["judge"] == "reward functions (says+length)"
    assert "reward_functions_after" in summary and not (out / "reward_model").exists()


def test_config_file_and_set_hold_every_setting(tmp_path):
    (tmp_path / "run.yaml").write_text("algo: rloo\nrm_epochs: 2\nextra:\n  ppo_epochs: 2\n")
    out, summary = run_text(tmp_path, "--config", str(tmp_path / "run.yaml"),
                            "--set", "extra.normalize_advantages=true", "--prompts", str(prompt_file(tmp_path, False)),
                            "--preferences", str(preference_file(tmp_path, False)))
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["algo"] == "rloo" and saved["rm_epochs"] == 2 and summary["algo"] == "rloo"
    assert saved["extra"] == {"ppo_epochs": 2, "normalize_advantages": True}


def test_unpaired_kto_data_trains_kto_directly(tmp_path):
    data = tmp_path / "unpaired.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c, "label": ok}) + "\n"
                            for p in PROMPTS for c, ok in (("good fun", True), ("bad awful", False))))
    _, summary = run_text(tmp_path, "--algo", "kto", "--prompts", str(prompt_file(tmp_path, False)),
                          "--preferences", str(data))
    assert summary["kto_steps"] > 0 and summary["labels_used"] == 0 and "eval/rewards_desirable" in summary


def test_report_to_trackio_and_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, _ = run_text(tmp_path, "--algo", "dpo", "--prompts", str(prompt_file(tmp_path, False)),
                      "--preferences", str(preference_file(tmp_path, False)), "--report-to", "trackio", "wandb")
    assert list((out / "wandb").glob("offline-run-*")) and not (out / "tb").exists()
