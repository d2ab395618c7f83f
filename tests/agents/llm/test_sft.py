"""agents.llm.sft: TRL's SFT formats read into (context, target) tokens, the completion-only loss against a naive
float64 sum, training that lowers the held-out completion loss, and the SFT run (run directory, resume, LoRA)."""

import json
import math

import pytest
import torch

from agents.llm.sft import SFTConfig, SFTTrainer, read_demonstrations
from agents.loop.text.sft import SFTRunConfig, run_sft, sft_done
from rewardmodels.text.preferences import TextPreferenceFileError
from tests.agents.lm_fixtures import changed, snapshot
from tests.chat_fixtures import make_chat_tokenizer, make_decoder
from textenv.lora import LoraSettings
from textenv.prompts import PromptSource

PROMPTS = ["the movie was", "this book is", "i loved the", "the phone was", "we hated this", "the plot is"]


def demos(n=2):
    return [{"prompt": p, "completion": "good fun good"} for p in PROMPTS for _ in range(n)]


def test_formats_become_context_and_target_tokens():
    tok = make_chat_tokenizer()
    eos = tok.eos_token_id
    pc, text, msgs, conv = read_demonstrations([
        {"prompt": "the movie was", "completion": "good fun"},
        {"text": "the plot is good"},
        {"messages": [{"role": "user", "content": "the movie was"}, {"role": "assistant", "content": "good"}]},
        {"prompt": [{"role": "user", "content": "the movie was"}], "completion": [{"role": "assistant",
                                                                                  "content": "good"}]},
    ], tok)
    # prompt/completion: the prompt as the env tokenises prompts; the loss on the completion and EOS only
    assert pc.prompt_ids == PromptSource.tokenize(["the movie was"], tok)[0]
    assert pc.target_ids == tok("good fun", add_special_tokens=False)["input_ids"] + [eos]
    # text: the loss on every token after the first
    ids = tok("the plot is good", add_special_tokens=True)["input_ids"] + [eos]
    assert text.prompt_ids + text.target_ids == ids and len(text.prompt_ids) == 1
    # messages: every token of the rendered conversation (TRL's default)
    full = tok.apply_chat_template(
        [{"role": "user", "content": "the movie was"}, {"role": "assistant", "content": "good"}], tokenize=False)
    assert tok.decode(msgs.prompt_ids + msgs.target_ids).split() == full.split()
    # conversational prompt-completion: the template's assistant turn is the target
    assert tok.decode(conv.target_ids).split() == ["good", "<eos>"]


def test_assistant_only_loss_and_full_loss_options():
    tok = make_chat_tokenizer()
    conv = [{"role": "user", "content": "the movie was"}, {"role": "assistant", "content": "good fun"}]
    [only] = read_demonstrations([{"messages": conv}], tok, SFTConfig(assistant_only_loss=True))
    assert tok.decode(only.target_ids).split() == ["good", "fun", "<eos>"]
    [whole] = read_demonstrations([{"prompt": "the movie was", "completion": "good"}], tok,
                                  SFTConfig(completion_only_loss=False))
    assert len(whole.prompt_ids) == 1  # the prompt is trained on too


@pytest.mark.parametrize(("record", "message"), [
    ({"chosen": "a", "rejected": "b"}, "no SFT format fits"),
    ({"prompt": "the movie was", "completion": ""}, "completion must be a non-empty string"),
    ({"messages": "hello"}, "messages must be a non-empty list"),
    ("just text", "expected a JSON object"),
])
def test_bad_records_are_named(record, message, tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"text": "the movie was good"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TextPreferenceFileError, match=message) as err:
        read_demonstrations(path, make_chat_tokenizer())
    assert "demos.jsonl:2" in str(err.value)


def test_the_loss_is_the_mean_nll_of_the_target_tokens_by_float64_reference():
    torch.manual_seed(0)
    tok = make_chat_tokenizer()
    model = make_decoder("llama", tok)
    trainer = SFTTrainer(model, tok, demos(1)[:3], SFTConfig(batch_size=3))
    with torch.no_grad():
        loss, metrics = trainer.batch_loss(torch.arange(3))
    total, count = 0.0, 0
    for d in trainer.examples:  # one sequence at a time, no padding, float64 log-softmax
        ids = torch.tensor([d.prompt_ids + d.target_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for t in range(len(d.prompt_ids), ids.shape[1]):
            total -= float(logp[t - 1, ids[0, t]])
            count += 1
    assert float(loss) == pytest.approx(total / count, rel=1e-5) and float(metrics["tokens"]) == count


def test_sft_lowers_the_heldout_completion_loss_and_changes_the_weights():
    torch.manual_seed(0)
    tok = make_chat_tokenizer()
    model = make_decoder("llama", tok)
    before = snapshot(model)
    trainer = SFTTrainer(model, tok, demos(3), SFTConfig(learning_rate=1e-2, epochs=3, batch_size=6))
    held = [{"prompt": "the story was", "completion": "good fun good"}]
    start = trainer.heldout_loss(held)
    trainer.learn()
    assert trainer.heldout_loss(held) < 0.7 * start and changed(before, model)
    assert trainer.ref_model is None  # SFT has no reference: no copy of the model


def test_sft_run_writes_its_directory_resumes_and_merges_lora(tmp_path, monkeypatch):
    tok = make_chat_tokenizer()
    (tmp_path / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos(2)))
    model = make_decoder("qwen2", tok)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "tok")
    cfg = SFTRunConfig(data=str(tmp_path / "demos.jsonl"), model=str(tmp_path / "m"), tokenizer=str(tmp_path / "tok"),
                       epochs=2, learning_rate=1e-2, batch_size=4, extra={"lora": LoraSettings(r=4)})
    out = tmp_path / "sft"
    real, calls = SFTTrainer.heldout_loss, []

    def stopping(self, data, batch_size=None):  # before, after epoch 1 (checkpointed), then Ctrl-C
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, data, batch_size)

    monkeypatch.setattr(SFTTrainer, "heldout_loss", stopping)
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg, out)
    monkeypatch.setattr(SFTTrainer, "heldout_loss", real)
    assert not sft_done(out) and (out / "checkpoints" / "epoch-0001").is_dir()
    summary = run_sft(SFTRunConfig.load(out), out, resume=True)  # the second epoch only
    assert sft_done(out) and summary["epochs"] == 2 and summary["steps"] == 2 * math.ceil(summary["train_examples"] / 4)
    assert math.isfinite(summary["heldout_loss_after"]) and summary["heldout_examples"] >= 1
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "model")  # a whole model: the trained adapters merged in
    assert not any("lora" in k for k in merged.state_dict()) and (out / "adapters" / "adapter_config.json").exists()
    assert changed(snapshot(model), merged)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["sft/epoch"] for r in rows if "sft/epoch" in r] == [1, 2]
    assert (out / "curves.png").exists() and json.loads((out / "config.json").read_text())["config"]["epochs"] == 2
