"""Text tokenizer: a sentencepiece model trained by `latentlm train-tokenizer` on our own corpus.

The special tokens of docs/design.md §3 are single ids (sentencepiece user-defined symbols): the latent
span markers, Kosmos-2's grounding tokens and the 1024 `<patch_index_XXXX>` tokens of its 32x32 grid.
Byte fallback lets any UTF-8 text round-trip, so prompts outside the corpus still encode.

Tokens added after a model was trained (`ADDED_TOKENS`) are appended to the end of the vocabulary, so
every earlier id keeps its meaning and a trained model only grows new embedding rows.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from latentlm.errors import CheckpointError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPAN_TOKENS = ("<image>", "</image>", "<audio>", "</audio>")
GROUNDING_TOKENS = ("<grounding>", "<phrase>", "</phrase>", "<object>", "</object>")
PATCH_TOKENS = tuple(f"<patch_index_{i:04d}>" for i in range(32 * 32))
SPECIAL_TOKENS = SPAN_TOKENS + GROUNDING_TOKENS + PATCH_TOKENS
# Appended after the trained vocabulary (ids past the BPE pieces): Kosmos-2's separator of several boxes.
ADDED_TOKENS = ("</delimiter_of_multi_objects/>",)

# A few words beyond the shapes captions, so that instructions and questions tokenize sensibly.
EXTRA_CORPUS = (
    "draw a picture of a red circle",
    "generate an image of a blue square above a green triangle",
    "say a small yellow triangle",
    "speak the sentence",
    "describe the picture",
    "what is in the image?",
    "where is the purple circle?",
    "what colour is the square?",
    "how many shapes are there?",
    "find the orange triangle",
    "yes no one two there is there are it is the image shows",
)


class TextTokenizer:
    """Thin wrapper over a sentencepiece model with named special ids."""

    def __init__(self, model_file: str | os.PathLike) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: train one with `latentlm train-tokenizer`")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            ok = self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a valid sentencepiece model ({e}); train or copy it again") from None
        if not ok:
            raise CheckpointError(f"{path} is not a valid sentencepiece model; train or copy it again")
        missing = [t for t in (PAD, BOS, EOS, *SPECIAL_TOKENS) if self.sp.PieceToId(t) == self.sp.unk_id()]
        if missing:
            raise CheckpointError(f"{path} lacks special tokens {missing[:3]}; train it with `latentlm train-tokenizer`")

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def token_id(self, piece: str) -> int:
        i = self.sp.PieceToId(piece)
        if i == self.sp.unk_id() and piece != UNK:
            raise KeyError(f"{piece!r} is not a token of {self.path}")
        return i

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def pieces(self, text: str) -> list[str]:
        return self.sp.EncodeAsPieces(text)


def append_tokens(model_bytes: bytes, tokens: Iterable[str]) -> bytes:
    """A sentencepiece model with `tokens` appended as user-defined pieces (new ids at the end)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    have = {p.piece for p in proto.pieces}
    for token in tokens:
        if token not in have:
            proto.pieces.add(piece=token, score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    return proto.SerializeToString()


def extend_tokenizer(model_file: str | os.PathLike, out_file: str | os.PathLike) -> TextTokenizer:
    """Append any missing `ADDED_TOKENS` to an older tokenizer, keeping its ids (for warm starts)."""
    _write_atomic(Path(out_file), append_tokens(Path(model_file).read_bytes(), ADDED_TOKENS))
    return TextTokenizer(out_file)


def _write_atomic(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


def train_tokenizer(corpus: Iterable[str], out_file: str | os.PathLike, vocab_size: int = 1400) -> TextTokenizer:
    """Train a BPE sentencepiece model on `corpus`, append `ADDED_TOKENS`, write it atomically to `out_file`.

    `vocab_size` counts the trained pieces; the appended tokens come on top."""
    lines = [line.strip() for line in corpus if line.strip()] + list(EXTRA_CORPUS)
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        user_defined_symbols=list(SPECIAL_TOKENS),
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    _write_atomic(Path(out_file), append_tokens(model.getvalue(), ADDED_TOKENS))
    return TextTokenizer(out_file)


def shapes_corpus(n: int = 20_000) -> list[str]:
    """Captions and grounding strings of the first `n` train scenes."""
    from latentlm.data.shapes import scene_for

    out = []
    for i in range(n):
        scene = scene_for("train", i)
        out += [scene.caption, scene.grounding]
    return out
