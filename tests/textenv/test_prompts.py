"""Prompt sources: lists, .txt, .jsonl, datasets.Dataset; chat-message prompts; empty and too-long prompts; seeded
sampling."""

import json

import numpy as np
import pytest

from tests.chat_fixtures import make_chat_lm, make_chat_tokenizer
from textenv.prompts import (
    ChatTemplateError,
    EmptyPromptSourceError,
    PromptError,
    PromptSource,
    PromptTooLongError,
    read_prompts,
)
from textenv.testing import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def test_list_txt_and_jsonl_sources(tmp_path):
    assert read_prompts(["a", "b"]) == ["a", "b"]
    txt = tmp_path / "p.txt"
    txt.write_text("the movie was\n\n  \nit is\n", encoding="utf-8")
    assert read_prompts(txt) == ["the movie was", "it is"]  # blank lines skipped
    assert read_prompts(str(txt)) == ["the movie was", "it is"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"text": "a b"}) + "\n\n" + json.dumps({"text": "c"}) + "\n", encoding="utf-8")
    assert read_prompts(jl, field="text") == ["a b", "c"]
    with pytest.raises(PromptError, match="prompt_field"):
        read_prompts(jl)  # default field "prompt" is absent


def test_datasets_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["x", "y"], "other": [1, 2]})
    assert read_prompts(ds) == ["x", "y"]
    with pytest.raises(PromptError, match="column"):
        read_prompts(ds, field="missing")


def test_dataset_like_object_is_read_by_column():
    class FakeDataset:
        column_names = ["prompt"]

        def __getitem__(self, key):
            return ["p1", "p2"]

    assert read_prompts(FakeDataset()) == ["p1", "p2"]


def test_empty_sources_raise(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    for source in ([], empty):
        with pytest.raises(EmptyPromptSourceError, match="at least one prompt"):
            read_prompts(source)


def test_bad_sources_raise(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        read_prompts("the movie was")  # a single string is a path, not a prompt
    with pytest.raises(PromptError, match="not a string"):
        read_prompts(["ok", 3])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(PromptError, match="JSON"):
        read_prompts(bad)
    with pytest.raises(PromptError, match="unsupported"):
        read_prompts(tmp_path / "x.csv") if (tmp_path / "x.csv").write_text("a") else None
    with pytest.raises(PromptError):
        read_prompts(42)


def test_too_long_prompt_raises_with_the_fix(tok):
    with pytest.raises(PromptTooLongError, match="raise max_prompt_tokens to at least 4"):
        PromptSource(["the movie", "the movie was good"], tok, max_prompt_tokens=3)
    src = PromptSource(["the movie"], tok, max_prompt_tokens=3)
    with pytest.raises(PromptTooLongError):
        src.encode(["a b c d e"])


def test_tokenization_and_empty_prompt_uses_a_start_token(tok):
    src = PromptSource(["the movie was", ""], tok, max_prompt_tokens=4)
    assert src.token_ids[0] == tok("the movie was")["input_ids"]
    assert src.token_ids[1] == [tok.eos_token_id]  # no BOS in this tokenizer: EOS starts unconditional text


def test_sampling_is_seeded_by_the_generator(tok):
    src = PromptSource([f"the {w}" for w in ("movie", "film", "book", "phone", "story")], tok, 4)
    a = src.sample(np.random.default_rng(3), 20)
    b = src.sample(np.random.default_rng(3), 20)
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 5 and len(set(a.tolist())) > 1


CHAT = [{"role": "system", "content": "so fun"}, {"role": "user", "content": "the movie was"}]


def test_message_list_prompts_are_rendered_with_the_chat_template(tmp_path):
    tok = make_chat_tokenizer()
    src = PromptSource(["the movie", CHAT], tok, max_prompt_tokens=16)
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert src.prompts == ["the movie", rendered]
    assert rendered == "system : so fun <eos> user : the movie was <eos> assistant : "
    # the template's text is tokenized as is: its <eos> markers become the EOS id, nothing is added
    assert src.token_ids[1] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert src.token_ids[1].count(tok.eos_token_id) == 2 and tok.unk_token_id not in src.token_ids[1]
    with pytest.raises(PromptTooLongError, match="prompt #1"):
        PromptSource(["the movie", CHAT], tok, max_prompt_tokens=12)
    # conversations from a .jsonl file and a datasets.Dataset column
    jl = tmp_path / "chat.jsonl"
    jl.write_text(json.dumps({"prompt": CHAT}) + "\n" + json.dumps({"prompt": "plain"}) + "\n", encoding="utf-8")
    assert read_prompts(jl) == [CHAT, "plain"]
    datasets = pytest.importorskip("datasets")
    assert read_prompts(datasets.Dataset.from_dict({"prompt": [CHAT]})) == [CHAT]


def test_chat_prompts_need_a_chat_template_and_valid_messages(tmp_path):
    with pytest.raises(ChatTemplateError, match=r"prompt #0 .*no chat template.*tokenizer.chat_template"):
        PromptSource([CHAT], make_tiny_tokenizer(), max_prompt_tokens=32)
    with pytest.raises(PromptError, match=r"prompt #1: message #0 must be a dict with string 'role' and 'content'"):
        read_prompts(["ok", [{"role": "user"}]])
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": [{"content": "hi"}]}) + "\n")
    with pytest.raises(PromptError, match=r"bad.jsonl:2: field 'prompt': message #0"):
        read_prompts(jl)
    jl.write_text(json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(PromptError, match=r"bad.jsonl:1: field 'prompt' is a int"):
        read_prompts(jl)


def test_textgen_env_accepts_chat_prompts():
    from textenv import TextGenEnv

    model, tok = make_chat_lm()
    env = TextGenEnv(model=model, tokenizer=tok, prompts=[CHAT], max_new_tokens=3, max_prompt_tokens=16,
                     info_text=True)
    obs, info = env.reset(seed=0)
    assert info["prompt"] == "system : so fun <eos> user : the movie was <eos> assistant : "
    ids = obs["input_ids"][obs["attention_mask"].astype(bool)].tolist()
    assert ids == tok(info["prompt"], add_special_tokens=False)["input_ids"]
