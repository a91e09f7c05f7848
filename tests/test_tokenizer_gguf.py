"""The Gemma 3 tokenizer built from the vocabulary inside the real GGUF file (the offline 270M package)."""

from __future__ import annotations

import pytest

from engine.tokenizer import END_OF_TURN_ID, START_OF_TURN_ID, SentencePieceTokenizer, chat_prompt, load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    from engine.weights.gguf import gguf_tokenizer_proto

    return SentencePieceTokenizer(gguf_tokenizer_proto(), origin="gguf")


def test_capital_of_france_ids(tok):
    assert tok.encode("The capital of France is", add_bos=True) == [2, 818, 5279, 529, 7001, 563]
    assert tok.vocab_size == 262144
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 1, 0)


@pytest.mark.parametrize("text", [
    "The capital of France is",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "  leading spaces, trailing  ",
    "multiple\n\nnew lines\n\n\n and\ttabs\t\t",
    "def f(x):\n    return x  # indented code\n",
    "digits 0123456789 -42 3.14159 1,000,000",
    "Ünïcödé: 日本語テキスト, emoji 😀🚀, math ∑∫√, Ελληνικά, русский",
    "<reasoning>3 + 5 = 8</reasoning>\n<answer>8</answer>",
    "rare bytes \x00\x07 and \u200b zero width",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_split_and_spaces_use_whitespace_pieces(tok):
    ids = tok.encode("12345")
    assert len(ids) == 5
    assert tok.encode("a  b")[1] == 138  # the "two spaces" piece, as llama.cpp and SentencePiece both do


def test_turn_markers_single_ids_typed_or_templated(tok):
    prompt = chat_prompt("Hi")
    ids = tok.encode(prompt, add_bos=True)
    assert ids == [2, START_OF_TURN_ID, 2364, 107, 10979, END_OF_TURN_ID, 107, START_OF_TURN_ID, 4368, 107]
    assert tok.decode(ids) == prompt
    typed = tok.encode("x<end_of_turn>y<start_of_turn>")
    assert typed.count(END_OF_TURN_ID) == 1 and typed[-1] == START_OF_TURN_ID


def test_decode_drops_bos_eos_pad(tok):
    ids = [2] + tok.encode("Paris.") + [1, 0, 0]
    assert tok.decode(ids) == "Paris."


def test_serialized_model_reloads_from_file(tok, tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(tok.serialized())
    again = load_tokenizer(path)
    text = "The capital of France is Paris. 😀"
    assert again.encode(text) == tok.encode(text)


def test_random_270m_without_tokenizer_path_gets_the_packaged_vocabulary(tmp_path):
    import types

    from engine.model.config import model_config
    from engine.model.load import load_tokenizer_for

    section = types.SimpleNamespace(tokenizer_path="")
    messages: list[str] = []
    tok = load_tokenizer_for(section, model_config("270m"), None, messages.append)
    assert tok.encode("The capital of France is", add_bos=True) == [2, 818, 5279, 529, 7001, 563]
    assert any("packaged GGUF" in m for m in messages)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(tok.serialized())
    named = load_tokenizer_for(types.SimpleNamespace(tokenizer_path=str(path)), model_config("270m"), None)
    assert named.encode("Paris") == tok.encode("Paris")
    tiny = load_tokenizer_for(section, model_config("tiny"), None)
    assert tiny.vocab_size == 384
