"""Tokenizers: Gemma's SentencePiece (from a `tokenizer.model` or a GGUF vocabulary) and a byte tokenizer for `tiny`.

Both keep Gemma's special ids (pad 0, eos 1, bos 2, unk 3, `<start_of_turn>` 105, `<end_of_turn>` 106). The turn
markers typed in text always become their single ids, and decode back to their text; other special ids are dropped
by `decode`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
_TURN_IDS = {START_OF_TURN: START_OF_TURN_ID, END_OF_TURN: END_OF_TURN_ID}
_TURN_TEXT = {v: k for k, v in _TURN_IDS.items()}
_TURN_SPLIT = re.compile(f"({re.escape(START_OF_TURN)}|{re.escape(END_OF_TURN)})")


class TokenizerError(Exception):
    """A tokenizer file is missing or cannot be read, or its special ids are not Gemma's."""


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer (docs/contracts.md)."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    start_of_turn_id: int
    end_of_turn_id: int

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def chat_prompt(user_text: str) -> str:
    """Gemma's chat template for one user turn, ending where the model's answer starts."""
    return f"{START_OF_TURN}user\n{user_text}{END_OF_TURN}\n{START_OF_TURN}model\n"


def _split_turns(text: str) -> list[str]:
    """Text cut around the turn markers; the markers are kept as their own parts."""
    return [part for part in _TURN_SPLIT.split(text) if part]


def _decode_with_turns(ids: Sequence[int], decode_plain: Callable[[list[int]], str]) -> str:
    """Decode runs of ordinary ids with `decode_plain`, writing turn markers as their text."""
    return "".join(_TURN_TEXT[part] if isinstance(part, int) else decode_plain(part) for part in _split_ids(ids))


def _split_ids(ids: Sequence[int]) -> list[list[int] | int]:
    """Runs of ordinary ids, with each turn-marker id on its own (as an int)."""
    out: list[list[int] | int] = []
    run: list[int] = []
    for i in ids:
        i = int(i)
        if i in _TURN_TEXT:
            if run:
                out.append(run)
                run = []
            out.append(i)
        else:
            run.append(i)
    if run:
        out.append(run)
    return out


class SentencePieceTokenizer:
    """Gemma's SentencePiece model behind the `Tokenizer` interface."""

    def __init__(self, model_proto: bytes, origin: str = "tokenizer"):
        import sentencepiece as spm

        self.origin = origin
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError with terse text
            raise TokenizerError(f"{origin}: not a SentencePiece model ({exc})") from None
        self.vocab_size = int(self._sp.GetPieceSize())
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID
        self.unk_id = UNK_ID
        self.start_of_turn_id, self.end_of_turn_id = START_OF_TURN_ID, END_OF_TURN_ID
        self._check_ids()

    def _check_ids(self) -> None:
        sp = self._sp
        found = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id(), "unk": sp.unk_id()}
        want = {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID, "unk": UNK_ID}
        bad = [f"{k} is {found[k]} (Gemma: {want[k]})" for k in want if found[k] != want[k]]
        for text, i in _TURN_IDS.items():
            if self.vocab_size <= i or sp.IdToPiece(i) != text:
                bad.append(f"id {i} is not {text}")
        if bad:
            raise TokenizerError(f"{self.origin}: not a Gemma tokenizer: " + ", ".join(bad))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        """Load a `tokenizer.model` file."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise TokenizerError(f"tokenizer file {p} does not exist")
        return cls(p.read_bytes(), origin=str(p))

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; turn markers become 105/106; `add_bos` puts 2 in front."""
        ids = [BOS_ID] if add_bos else []
        parts = _split_turns(text)
        plain = [p for p in parts if p not in _TURN_IDS]
        encoded = iter(self._sp.EncodeAsIds(plain)) if plain else iter(())
        for part in parts:
            ids.extend([_TURN_IDS[part]] if part in _TURN_IDS else next(encoded))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bos/eos/pad and other control ids are dropped, turn markers kept as text."""
        return _decode_with_turns(ids, lambda part: self._sp.DecodeIds([i for i in part if 0 <= i < self.vocab_size]))

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of one id."""
        return self._sp.IdToPiece(int(i))

    def serialized(self) -> bytes:
        """The SentencePiece model as bytes (what a `tokenizer.model` file holds)."""
        return self._sp.serialized_model_proto()


class ByteTokenizer:
    """UTF-8 bytes as ids 128..383 (vocab 384) with Gemma's special ids below 128; for the `tiny` model."""

    BYTE_OFFSET = 128

    def __init__(self, vocab_size: int = 384):
        if vocab_size < self.BYTE_OFFSET + 256:
            raise TokenizerError(f"a byte tokenizer needs a vocabulary of at least 384, not {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = BOS_ID, EOS_ID, PAD_ID, UNK_ID
        self.start_of_turn_id, self.end_of_turn_id = START_OF_TURN_ID, END_OF_TURN_ID

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Byte ids of `text`; turn markers become 105/106; `add_bos` puts 2 in front."""
        ids = [BOS_ID] if add_bos else []
        for part in _split_turns(text):
            if part in _TURN_IDS:
                ids.append(_TURN_IDS[part])
            else:
                ids.extend(b + self.BYTE_OFFSET for b in part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special ids other than the turn markers are dropped; bad UTF-8 becomes U+FFFD."""
        def plain(part: list[int]) -> str:
            data = bytes(i - self.BYTE_OFFSET for i in part if self.BYTE_OFFSET <= i < self.BYTE_OFFSET + 256)
            return data.decode("utf-8", errors="replace")

        return _decode_with_turns(ids, plain)

    def id_to_piece(self, i: int) -> str:
        """A readable name for one id."""
        i = int(i)
        if i in _TURN_TEXT:
            return _TURN_TEXT[i]
        if self.BYTE_OFFSET <= i < self.BYTE_OFFSET + 256:
            return f"<0x{i - self.BYTE_OFFSET:02X}>"
        return {PAD_ID: "<pad>", EOS_ID: "<eos>", BOS_ID: "<bos>", UNK_ID: "<unk>"}.get(i, f"<unused{i}>")


def sentencepiece_proto(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                        bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID, unk_id: int = UNK_ID,
                        add_space_prefix: bool = False) -> bytes:
    """A serialized SentencePiece BPE model (Gemma's settings) from a vocabulary: pieces, scores, token types.

    Types use the shared numbering of SentencePiece and GGUF: 1 normal, 2 unknown, 3 control, 4 user-defined,
    5 unused, 6 byte. The unknown id is given type UNKNOWN whatever the vocabulary says (SentencePiece needs it).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not (len(pieces) == len(scores) == len(types)):
        raise TokenizerError(f"vocabulary lists differ in length: {len(pieces)} pieces, {len(scores)} scores, "
                             f"{len(types)} types")
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = any(t == 6 for t in types)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk_id, bos_id, eos_id, pad_id
    spec.unk_piece, spec.bos_piece = pieces[unk_id], pieces[bos_id]
    spec.eos_piece, spec.pad_piece = pieces[eos_id], pieces[pad_id]
    spec.allow_whitespace_only_pieces = True
    spec.split_digits = True
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    add = model.pieces.add
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
        add(piece=piece, score=float(score), type=2 if i == unk_id else int(kind))
    return model.SerializeToString()


def load_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer:
    """A SentencePiece tokenizer from a `tokenizer.model` file, or from a folder that holds one."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("tokenizer.model")) or sorted(p.glob("*/tokenizer.model"))
        if not found:
            raise TokenizerError(f"no tokenizer.model in {p}")
        p = found[0]
    return SentencePieceTokenizer.from_file(p)
