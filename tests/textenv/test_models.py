"""Loading policy/tokenizer/reference from objects and local paths; vocabulary and pad-token checks."""

import pytest
import torch

from textenv.models import (
    REF_COPY,
    ModelLoadError,
    VocabularyMismatchError,
    check_vocab,
    frozen_copy,
    load_policy,
    load_reference,
    max_positions,
    pad_token_id,
    vocab_size,
)
from textenv.testing import DEFAULT_WORDS, make_tiny_lm, make_tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


def test_objects_are_used_as_given(lm):
    model, tok = lm
    m, t = load_policy(model, tok)
    assert m is model and t is tok
    assert vocab_size(model) == len(tok) and max_positions(model) == 128


def test_local_path_loads_model_and_tokenizer(lm, tmp_path):
    model, tok = lm
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m, t = load_policy(str(tmp_path), None)
    assert vocab_size(m) == len(t) == len(tok)
    ids = torch.tensor([[4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(m.eval()(ids).logits, model(ids).logits, atol=1e-6)
    m2, t2 = load_policy(tmp_path, str(tmp_path))  # PathLike model, tokenizer as a path
    assert len(t2) == len(tok)
    ref = load_reference(str(tmp_path), model, torch.device("cpu"))
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training


def test_bad_model_arguments_raise(lm, tmp_path):
    model, tok = lm
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_policy(model, None)
    with pytest.raises(ModelLoadError, match="no such directory here"):  # at once: no hub is asked for a path
        load_policy(str(tmp_path / "nowhere"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no readable config.json"):  # a directory, but no model in it
        load_policy(str(tmp_path / "empty"), None)
    with pytest.raises(ModelLoadError):
        load_policy(42, tok)
    with pytest.raises(ModelLoadError):
        load_policy(model, 42)


def test_vocabulary_mismatch(lm):
    model, _ = lm
    bigger = make_tiny_tokenizer(list(DEFAULT_WORDS) + ["extra"])
    with pytest.raises(VocabularyMismatchError, match="resize_token_embeddings"):
        check_vocab(model, bigger)
    smaller = make_tiny_tokenizer(list(DEFAULT_WORDS)[:-3])
    check_vocab(model, smaller)  # a padded embedding matrix (more logits than tokens) is fine
    other = make_tiny_lm(words=list(DEFAULT_WORDS)[:-3])[0]
    with pytest.raises(VocabularyMismatchError, match="reference"):
        load_reference(other, model, torch.device("cpu"))


def test_reference_model_options(lm):
    model, _ = lm
    assert load_reference(None, model, torch.device("cpu")) is None
    ref = load_reference(REF_COPY, model, torch.device("cpu"))
    assert ref is not model and not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] += 1.0  # the copy is independent of later policy updates
    try:
        assert ref.transformer.wte.weight[0, 0] != model.transformer.wte.weight[0, 0]
    finally:
        with torch.no_grad():
            model.transformer.wte.weight[0, 0] -= 1.0
    frozen = frozen_copy(model)
    assert not frozen.training
    with pytest.raises(ModelLoadError):
        load_reference(3, model, torch.device("cpu"))


def test_pad_token_fallbacks(lm):
    _, tok = lm
    assert pad_token_id(tok) == tok.pad_token_id == 0

    class NoPad:
        pad_token_id, eos_token_id = None, 7

    class Nothing:
        pad_token_id = eos_token_id = None

    assert pad_token_id(NoPad()) == 7 and pad_token_id(Nothing()) == 0


def test_none_loads_the_default_lm():
    default_lm = pytest.importorskip("textenv.default_lm")
    model, tok = load_policy(None, None)
    assert vocab_size(model) >= len(tok)
    assert default_lm.DEFAULT_LM_PATH.is_dir()


def test_locate_refuses_missing_paths_and_offline_hub_ids_without_the_network(tmp_path, monkeypatch):
    import socket

    from textenv.sources import locate

    def no_network(*args, **kwargs):
        raise AssertionError("no connection may be tried")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert locate(tmp_path) == str(tmp_path.resolve())
    for path in (tmp_path / "missing", "./models/x", "a/b/c", "~/nope-rlhf-gym"):
        with pytest.raises(ModelLoadError, match="no such directory here"):
            locate(path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        locate("some-org/some-model-not-cached")
