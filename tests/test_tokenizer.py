"""Tokenizers without real weights: the byte tokenizer of `tiny`, and SentencePiece models built from a vocabulary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.tokenizer import (
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    PAD_ID,
    START_OF_TURN_ID,
    ByteTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    chat_prompt,
    load_tokenizer,
    sentencepiece_proto,
)

VARIED = [
    "The capital of France is",
    "  two leading spaces and trailing   ",
    "line one\nline two\n\n\tindented\r\n",
    "digits 0123456789, -42, 3.14159, 1,000,000",
    "Ünïcödé: 日本語テキスト, emoji 😀🚀, math ∑∫√, Ελληνικά",
    "<reasoning>Tom has 3 + 5 = 8 apples.</reasoning><answer>8</answer>",
    "",
]


def test_byte_tokenizer_special_ids_match_gemma():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (384, 0, 1, 2)
    assert (tok.start_of_turn_id, tok.end_of_turn_id) == (105, 106)
    assert tok.encode("A", add_bos=True) == [BOS_ID, 128 + ord("A")]
    assert max(tok.encode("ÿ\U0010ffff")) < 384


@pytest.mark.parametrize("text", VARIED)
def test_byte_tokenizer_round_trips(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == BOS_ID and all(0 <= i < 384 for i in ids)
    assert tok.decode(ids) == text


def test_turn_markers_become_single_ids_and_decode_back():
    tok = ByteTokenizer()
    prompt = chat_prompt("What is 2+2?")
    assert prompt == "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(prompt)
    assert ids.count(START_OF_TURN_ID) == 2 and ids.count(END_OF_TURN_ID) == 1
    assert ids[0] == START_OF_TURN_ID
    assert tok.decode(ids) == prompt
    # A marker that is only half typed stays text.
    assert START_OF_TURN_ID not in tok.encode("<start_of_turn")


def test_decode_drops_control_ids_but_keeps_turn_markers():
    tok = ByteTokenizer()
    ids = [BOS_ID, *tok.encode("hi"), END_OF_TURN_ID, EOS_ID, PAD_ID, PAD_ID]
    assert tok.decode(ids) == "hi<end_of_turn>"


def test_byte_tokenizer_rejects_small_vocab():
    with pytest.raises(TokenizerError, match="384"):
        ByteTokenizer(vocab_size=256)


def _toy_vocab() -> tuple[list[str], list[float], list[int]]:
    """A Gemma-shaped vocabulary: specials 0..3, unused up to 104, turn markers, bytes, then merges."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<unused{i}>" for i in range(4, 105)]
    types = [3] * len(pieces)
    pieces += ["<start_of_turn>", "<end_of_turn>", "\n", "▁▁"]
    types += [3, 3, 4, 4]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    merges = ["▁", "a", "b", "c", "ab", "▁a", "▁ab", "abc", "é"]
    pieces += merges
    types += [1] * len(merges)
    scores = [0.0] * (len(pieces) - len(merges)) + [-float(i) for i in range(len(merges))]
    return pieces, scores, types


def test_sentencepiece_model_from_vocabulary_encodes_by_merge_score():
    pieces, scores, types = _toy_vocab()
    tok = SentencePieceTokenizer(sentencepiece_proto(pieces, scores, types))
    assert tok.vocab_size == len(pieces)
    ids = tok.encode("abc ab", add_bos=True)
    assert [tok.id_to_piece(i) for i in ids] == ["<bos>", "abc", "▁ab"]
    # user-defined "▁▁" and "\n" pieces, and byte fallback for characters outside the vocabulary
    pieces_of = [tok.id_to_piece(i) for i in tok.encode("a  b\nZ")]
    assert pieces_of == ["a", "▁▁", "b", "\n", "<0x5A>"]
    for text in ["abc ab", "a  b\nZ", "Ωmega ∑ 😀", "x<end_of_turn>y", " lead"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<start_of_turn>ab<end_of_turn>") == [START_OF_TURN_ID, pieces.index("ab"), END_OF_TURN_ID]


def test_sentencepiece_round_trip_through_a_file(tmp_path):
    pieces, scores, types = _toy_vocab()
    model_file = tmp_path / "tokenizer.model"
    model_file.write_bytes(sentencepiece_proto(pieces, scores, types))
    tok = load_tokenizer(tmp_path)  # a folder holding tokenizer.model
    assert tok.encode("ab") == [pieces.index("ab")]
    assert tok.serialized() and load_tokenizer(model_file).encode("ab") == [pieces.index("ab")]


def test_tokenizer_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="nothere.model"):
        load_tokenizer(tmp_path / "nothere.model")
    with pytest.raises(TokenizerError, match="no tokenizer.model"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(bad)


def test_non_gemma_vocabulary_is_rejected():
    pieces, scores, types = _toy_vocab()
    pieces[105], pieces[106] = "<x>", "<y>"
    with pytest.raises(TokenizerError, match="not a Gemma tokenizer"):
        SentencePieceTokenizer(sentencepiece_proto(pieces, scores, types))
