"""``rlhf-gym text`` on your own pieces: a locally built tiny Qwen2 / Llama checkpoint, a prompt file and a TRL-format
preference file (standard and conversational), DPO on the file and GRPO on a reward model trained on it; validation
errors in one line with exit status 2; --resume."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from agents.cli import main
from rewardmodels.text.lm_reward import LMRewardModel, pairwise_accuracy
from rewardmodels.text.preferences import load_text_preferences
from tests.agents.lm_fixtures import snapshot
from tests.chat_fixtures import make_chat_tokenizer, make_decoder

PROMPTS = ["the movie was", "this book is", "i loved the", "the phone was", "we hated this", "the plot is",
           "the story was", "the acting is"]
TINY_FLAGS = ["--iterations", "2", "--max-new-tokens", "4", "--max-prompt-tokens", "16", "--eval-prompts", "2",
              "--samples", "0", "--no-progress"]


def checkpoint(tmp_path, family="qwen2"):
    """A tiny checkpoint in Hugging Face format in a local directory, and the flags that name it.

    The word-level test tokenizer (with a chat template) is saved on its own and given with --tokenizer: saved next
    to a Qwen2 / Llama config.json, transformers 5's AutoTokenizer would load it as that family's BPE tokenizer, which
    reads these words as nothing (a real checkpoint's own tokenizer has no such problem)."""
    tokenizer = make_chat_tokenizer()
    model = make_decoder(family, tokenizer)
    path = tmp_path / family
    model.save_pretrained(path)
    tokenizer.save_pretrained(tmp_path / f"{family}-tokenizer")
    return ["--model", str(path), "--tokenizer", str(tmp_path / f"{family}-tokenizer")], snapshot(model)


def preference_file(tmp_path, conversational: bool):
    records = []
    for i, p in enumerate(PROMPTS * 2):
        good, bad = ("good great fun", "bad awful boring") if i % 2 else ("loved it really good", "hated it so bad")
        if conversational:
            records.append({"prompt": [{"role": "user", "content": p}],
                            "chosen": [{"role": "assistant", "content": good}],
                            "rejected": [{"role": "assistant", "content": bad}]})
        else:
            records.append({"prompt": p, "chosen": good, "rejected": bad})
    path = tmp_path / ("conversational.jsonl" if conversational else "standard.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def prompt_file(tmp_path, conversational: bool):
    path = tmp_path / ("prompts.jsonl" if conversational else "prompts.txt")
    if conversational:
        path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    else:
        path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.mark.parametrize(("family", "conversational"), [("qwen2", False), ("llama", True)])
def test_dpo_on_a_trl_preference_file_with_a_local_checkpoint(tmp_path, family, conversational):
    model_flags, initial = checkpoint(tmp_path, family)
    prefs = preference_file(tmp_path, conversational)
    out = tmp_path / "runs" / "x"
    argv = ["text", *model_flags, "--prompts", str(prompt_file(tmp_path, conversational)),
            "--preferences", str(prefs), "--algo", "dpo", "--out", str(out), *TINY_FLAGS]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    # --preferences without --labeller: the file is the labeller; every pair of it, none sampled
    assert summary["labels_used"] == 16 and summary["eval/reward_accuracy"] > 0.5
    assert json.loads((out / "config.json").read_text())["config"]["labeller"] == "dataset"
    trained = AutoModelForCausalLM.from_pretrained(out / "policy")  # save_pretrained, loadable as is
    assert type(trained).__name__.lower().startswith(family)
    assert any(not torch.equal(initial[k], v) for k, v in trained.state_dict().items())
    expected = load_text_preferences(prefs, make_chat_tokenizer())
    pairs = load_text_preferences(out / "pairs.jsonl")
    assert sorted(pairs.prompts) == sorted(expected.prompts)  # chat prompts rendered with the template


def test_grpo_on_a_reward_model_trained_on_the_file(tmp_path):
    model_flags, initial = checkpoint(tmp_path, "qwen2")
    out = tmp_path / "run"
    argv = ["text", *model_flags, "--prompts", str(prompt_file(tmp_path, False)),
            "--preferences", str(preference_file(tmp_path, True)), "--algo", "grpo", "--out", str(out), *TINY_FLAGS]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels_used"] == 16 and summary["rm_accuracy"] > 0.5
    reward = LMRewardModel.from_pretrained(out / "reward_model")  # the reward model trained on the file, reloaded
    reward.tokenizer = make_chat_tokenizer()  # see checkpoint(): the word-level tokenizer, not the family's
    pairs = load_text_preferences(out / "pairs.jsonl")
    accuracy = pairwise_accuracy(reward, pairs)
    print("reloaded reward model accuracy on the file", accuracy)
    assert accuracy > 0.5
    trained = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert any(not torch.equal(initial[k], v) for k, v in trained.state_dict().items())
    assert summary["tokens_seen"] > 0 and (out / "curves.png").exists()


def test_lora_flags_train_adapters_against_the_base(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel

    model_flags, initial = checkpoint(tmp_path, "llama")
    out = tmp_path / "lora"
    argv = ["text", *model_flags, "--prompts", str(prompt_file(tmp_path, False)), "--preferences",
            str(preference_file(tmp_path, False)), "--algo", "dpo", "--out", str(out), "--lora-r", "4",
            "--lora-targets", "q_proj,v_proj", "--gradient-checkpointing", *TINY_FLAGS]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["config"]["extra"]["lora"]["r"] == 4
    adapter = json.loads((out / "policy" / "adapter_config.json").read_text())  # policy/ holds the adapters
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    base = make_decoder("llama", make_chat_tokenizer())
    base.load_state_dict(initial)
    tuned = PeftModel.from_pretrained(base, out / "policy")
    lora_b = [v for k, v in tuned.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at 0: the adapters trained
    assert main([*argv[:-len(TINY_FLAGS)], "--lora-alpha", "8", *TINY_FLAGS[:-1], "--overwrite"]) == 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--pairs", "-1"], "num_pairs must be an integer >= 0"),
    (["--pairs", "0"], "num_pairs=0 (no labels) needs reward functions"),
    (["--reward-fn", "no_such_module:f", "--pairs", "0"], "importing no_such_module failed"),
    (["--reward-fn", "os:no_such_fn"], "os has no callable 'no_such_fn'"),
    (["--report-to", "trackio", "nope"], "unknown backend 'nope'"),
    (["--set", "no_such_field=1"], "no_such_field: not a setting of TextRLHFConfig"),
    (["--set", "rm_epochs"], "write it as KEY=VALUE"),
    (["--lr", "-1"], "learning_rate must be a finite number > 0"),
    (["--kl-coef", "nan"], "kl_coef (= grpo's beta): beta must be a finite number >= 0"),
    (["--algo", "ppo", "--kl-coef", "-1"], "kl_coef must be a finite number >= 0"),
    (["--rounds", "5", "--iterations", "2"], "must be >= rounds"),
    (["--model", "."], "needs prompts of your own"),
    (["--model", "no/such/dir"], "--model: model 'no/such/dir': no such directory here"),
    (["--model", "missing-org/missing-model", "--prompts", "p.txt"], "not in the Hugging Face cache"),
    (["--labeller", "dataset"], "pass preferences=FILE"),
    (["--lora-alpha", "8"], "need --lora-r"),
])
def test_bad_settings_end_in_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is then refused at once, whatever the network
    assert main(["text", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhf-gym text: error:") and message in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert main(["text", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_bad_input_files_name_the_file_and_line(tmp_path, capsys):
    model_flags, _ = checkpoint(tmp_path)
    prefs = tmp_path / "bad.jsonl"
    prefs.write_text(json.dumps({"prompt": "the movie was", "chosen": "good"}) + "\n")  # no rejected
    base = ["text", *model_flags, "--prompts", str(prompt_file(tmp_path, False)), "--algo", "dpo",
            *TINY_FLAGS]
    assert main([*base, "--preferences", str(prefs), "--out", str(tmp_path / "a")]) == 2
    assert f"{prefs}:1" in capsys.readouterr().err
    long_prompts = tmp_path / "long.txt"
    long_prompts.write_text("the movie was\n" + " ".join(["good"] * 40) + "\n")
    ok_prefs = preference_file(tmp_path, False)
    argv = ["text", *model_flags, "--prompts", str(long_prompts), "--preferences", str(ok_prefs),
            "--algo", "dpo", "--out", str(tmp_path / "b"), *TINY_FLAGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "rlhf-gym text: error:" in err and "16" in err  # the prompt is longer than --max-prompt-tokens 16


def test_resume_without_a_checkpoint_and_a_second_run_into_the_same_out(tmp_path, capsys):
    assert main(["text", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    model_flags, _ = checkpoint(tmp_path)
    argv = ["text", *model_flags, "--prompts", str(prompt_file(tmp_path, False)), "--preferences",
            str(preference_file(tmp_path, False)), "--algo", "dpo", "--out", str(tmp_path / "run"), *TINY_FLAGS]
    assert main(argv) == 0
    assert main(argv) == 2  # never appended to an earlier run
    assert "--resume" in capsys.readouterr().err
    assert main(["text", "--out", str(tmp_path / "run"), "--resume", "--no-progress", "--samples", "0"]) == 0
