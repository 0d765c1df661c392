import pytest

from latentlm.errors import CheckpointError
from latentlm.tokenizer import PATCH_TOKENS, SPECIAL_TOKENS, TextTokenizer


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path):
    return TextTokenizer(tiny_tokenizer_path)


@pytest.mark.parametrize("text", [
    "a small red circle",
    "a orange triangle left of a blue square",
    "draw a purple square below a green circle",
    "Unseen Words, punctuation!? and émoji 🦓",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_caption_words_are_single_pieces(tok):
    assert tok.pieces("a small red circle") == ["▁a", "▁small", "▁red", "▁circle"]


def test_special_tokens_are_single_distinct_ids(tok):
    ids = [tok.token_id(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) == 4 + 5 + 1024
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(t)[-1] == i  # encodes to one id (after sentencepiece's leading space piece)
        assert [p for p in tok.pieces(t) if p != "▁"] == [t]


def test_grounding_string_round_trip_and_ids(tok):
    s = "<grounding><phrase> a red circle</phrase><object><patch_index_0012><patch_index_1023></object>"
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.token_id(PATCH_TOKENS[12]) in ids and tok.token_id("<patch_index_1023>") in ids
    assert tok.token_id("<grounding>") in ids and tok.token_id("</object>") in ids


def test_control_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
    assert tok.vocab_size >= 1024 + 9 + 4


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        TextTokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="not a valid sentencepiece model"):
        TextTokenizer(bad)
