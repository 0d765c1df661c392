"""The codec-token baseline of text-to-speech (VALL-E style), on our backbones.

Speech is the EnCodec tokenizer's codes (`latentlm.codecs.EncodecTokenizer`: 50 frames a second, n_q
codebooks of `bins` codes). Two models share nothing but the backbone code and config:

    AR  (codebook 1, one code per step):
        <s> [PROMPT-TEXT] TEXT <audio> [p_1 .. p_K] c_1 .. c_T END
    NAR (codebook k = 2..n_q, every frame in one pass):
        <s> [PROMPT-TEXT] TEXT <audio> [P_1 .. P_K] A_1 .. A_T </audio> Q_1 .. Q_T    -> code k of frame t at Q_t

Vocabulary: separate tables. Text positions (the project's sentencepiece ids, `<s>`, `<audio>` and
`</audio>` included) embed from a text table; code positions from a code table. The AR's code table and
head have `bins + 1` rows: codes 0..bins-1 and END (= `bins`, the `</audio>` of the code stream). The AR
head predicts codes and END only; VALL-E learns no text, and a shared softmax would let the head write
text inside speech. The AR decides where speech ends (END), with a hard cap of `max_audio_per_token`
frames per text token, as our LatentLM does.

NAR: VALL-E's NAR attends bidirectionally over the audio, but every backbone of ours is causal. So the
NAR reads the audio twice: block A holds each frame's known codebooks (the sum of the embeddings of
codebooks 1..k-1), and after `</audio>` the query block Q repeats them; the query at frame t sees all of
A (left and right context) and Q_1..Q_t, and predicts code k of frame t. That costs T more positions
and works with every backbone kind. Q_t = A_t + a learned query vector; A and Q carry a sinusoidal frame
index (learned gain), so that Q_t finds A_t whatever T is. The stage (codebook k) is a learned embedding
added at every position (VALL-E conditions its layer norms on it). The NAR's code table has n_q * bins
rows (code x of codebook c at row c * bins + x); voice-prompt frames P sum all n_q codebooks. One
[bins, d] head per stage, stored as one [n_q - 1, bins, d] parameter that every step uses (DDP).

Voice prompt (VALL-E's zero-shot prompt, as for our LatentLM): the transcript goes before the text, the
prompt's codes before the generated ones (codebook 1 in the AR, all codebooks in the NAR); they are inputs,
never targets.

Training: `forward(batch)` is the loss (as in nanoGPT): the AR cross-entropy (codes and END) plus the NAR
cross-entropy at one stage drawn per utterance.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.checkpoint import (
    CONFIG_FILE, TOKENIZER_FILE, atomic_dir, load_codec, load_saved_tokenizer, load_weights, read_config,
    resolve_checkpoint, save_codec, save_weights, write_checksums, write_config,
)
from latentlm.errors import CheckpointError
from latentlm.tokenizer import TextTokenizer

IGNORE = -100  # cross-entropy target of positions without a loss


class CodecLMConfig(BaseModel):
    """Architecture of the baseline, saved as `config.json` (`kind` tells it from a LatentLM's)."""

    kind: Literal["codec_lm"] = "codec_lm"
    vocab_size: int = Field(..., ge=8)  # text tokens (the sentencepiece model)
    n_q: int = Field(8, ge=2)  # codebooks modelled: 1 by the AR, 2..n_q by the NAR
    bins: int = Field(1024, ge=2)  # codes per codebook
    backbone: BackboneConfig = BackboneConfig()  # the AR's and the NAR's (two backbones of this config)
    max_audio_per_token: int = Field(16, ge=1)  # hard cap of a generated utterance: frames per text token
    max_speech_tokens: int = Field(96, ge=1)  # longest text spoken at once
    codec: str = "audio_codec"  # sub-folder of the EnCodec tokenizer

    @property
    def end_id(self) -> int:
        """The AR's end-of-audio code."""
        return self.bins


@dataclass
class Utterance:
    """One example: the words to say, their codes, and an optional voice prompt (transcript and codes)."""

    text: list[int]  # token ids of the words (no markers)
    codes: Tensor  # [k, T] long: the codebooks known (training: all n_q; generation: those decoded so far)
    prompt_text: list[int] = field(default_factory=list)
    prompt_codes: Tensor | None = None  # [n_q, K] long


@dataclass
class CodecBatch:
    """A training batch: utterances and, per utterance, the NAR stage (codebook index k, 1..n_q-1)."""

    rows: list[Utterance]
    stages: list[int]

    def to(self, device) -> "CodecBatch":
        moved = [Utterance(u.text, u.codes.to(device), u.prompt_text,
                           None if u.prompt_codes is None else u.prompt_codes.to(device)) for u in self.rows]
        return CodecBatch(moved, self.stages)


def frame_signal(n: int, d: int, device: torch.device | str = "cpu") -> Tensor:
    """Sinusoidal signal of frame indices 0..n-1: [n, d] (sin in the first half, cos in the second)."""
    t = torch.arange(n, dtype=torch.float32, device=device)[:, None]  # [n, 1]
    half = torch.arange(d // 2, dtype=torch.float32, device=device)
    angles = t * torch.exp(-math.log(10_000.0) * half / max(1, d // 2))  # [n, d/2]
    return torch.cat([angles.sin(), angles.cos(), angles.new_zeros(n, d % 2)], dim=1)


def left_pad(rows: list[Tensor], fill: float | int = 0) -> tuple[Tensor, Tensor]:
    """Rows [L_i, ...] -> ([B, L, ...] with the rows right-aligned, valid [B, L] bool)."""
    b, length = len(rows), max(len(r) for r in rows)
    out = rows[0].new_full((b, length, *rows[0].shape[1:]), fill)
    valid = torch.zeros(b, length, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, length - len(r):] = r
        valid[i, length - len(r):] = True
    return out, valid


class CodecLM(nn.Module):
    """AR over codebook 1 + NAR over codebooks 2..n_q, with the frozen EnCodec tokenizer in `codecs["audio"]`."""

    def __init__(self, config: CodecLMConfig, tokenizer: TextTokenizer | None = None,
                 codec: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        d, n_q, bins = config.backbone.d_model, config.n_q, config.bins
        # AR: text and code tables, a backbone, a head over codes + END
        self.ar_text = nn.Embedding(config.vocab_size, d)
        self.ar_code = nn.Embedding(bins + 1, d)
        self.ar_backbone = build_backbone(config.backbone)
        self.ar_head = nn.Linear(d, bins + 1, bias=False)
        # NAR: text table, one table for all codebooks, stage, query and frame-index signals, a head per stage
        self.nar_text = nn.Embedding(config.vocab_size, d)
        self.nar_code = nn.Embedding(n_q * bins, d)
        self.nar_stage = nn.Embedding(n_q, d)
        self.nar_query = nn.Parameter(torch.zeros(d))
        self.nar_frame_gain = nn.Parameter(torch.tensor(0.02))
        self.nar_backbone = build_backbone(config.backbone)
        self.nar_head = nn.Parameter(torch.zeros(n_q - 1, bins, d))
        self.codecs = nn.ModuleDict({"audio": codec} if codec is not None else {})  # frozen; saved in its sub-folder
        for p in self.codecs.parameters():
            p.requires_grad_(False)
        for table in (self.ar_text, self.ar_code, self.nar_text, self.nar_code, self.nar_stage):
            nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.nar_query, std=0.02)
        nn.init.uniform_(self.nar_head, -d ** -0.5, d ** -0.5)  # as nn.Linear initialises ar_head

    # ---- sequences -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ar_text.weight.device

    def _head_ids(self, u: Utterance) -> Tensor:
        """`<s> [PROMPT-TEXT] TEXT <audio>` as ids [H]."""
        tok = self.tokenizer
        ids = [tok.bos_id, *u.prompt_text, *u.text, tok.token_id("<audio>")]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def ar_inputs(self, rows: list[Utterance]) -> tuple[Tensor, Tensor, Tensor]:
        """AR embeddings [B, L, d], valid [B, L] and targets [B, L] (IGNORE where no loss), rows left-padded.

        Position j's target is element j + 1: codebook 1 of the target codes, then END after the last one.
        With no target codes (generation's prefill) the last position predicts the first code."""
        xs, ts = [], []
        for u in rows:
            head = self._head_ids(u)  # [H]
            prompt = u.prompt_codes[0].to(self.device) if u.prompt_codes is not None else head.new_zeros(0)  # [K]
            target = u.codes[0].to(self.device)  # [T]
            xs.append(torch.cat([self.ar_text(head), self.ar_code(torch.cat([prompt, target]))]))  # [L_i, d]
            t = torch.full((len(head) + len(prompt) + len(target),), IGNORE, dtype=torch.long, device=self.device)
            t[len(head) + len(prompt) - 1:] = torch.cat([target, target.new_tensor([self.config.end_id])])
            ts.append(t)
        x, valid = left_pad(xs)
        targets, _ = left_pad(ts, IGNORE)
        return x, valid, targets

    def _code_sum(self, codes: Tensor) -> Tensor:
        """Sum of the NAR embeddings of codebooks 0..c-1 of `codes` [c, T] -> [T, d]."""
        offsets = torch.arange(len(codes), device=self.device)[:, None] * self.config.bins  # [c, 1]
        return self.nar_code(codes.to(self.device) + offsets).sum(0)

    def nar_inputs(self, rows: list[Utterance], stages: list[int]) -> tuple[Tensor, Tensor]:
        """NAR embeddings [B, L, d] and valid [B, L] for predicting codebook `stages[i]` (0-based, >= 1) of row i
        from its codebooks < stages[i]; each row's last T_i positions are its queries Q_1..Q_T."""
        close = self.nar_text(torch.tensor([self.tokenizer.token_id("</audio>")], device=self.device))  # [1, d]
        xs = []
        for u, k in zip(rows, stages):
            known = self._code_sum(u.codes[:k])  # [T, d]
            known = known + self.nar_frame_gain * frame_signal(len(known), known.shape[1], self.device)
            parts = [self.nar_text(self._head_ids(u))]
            if u.prompt_codes is not None:
                parts.append(self._code_sum(u.prompt_codes[: self.config.n_q]))  # [K, d]: every codebook
            parts += [known, close, known + self.nar_query]
            xs.append(torch.cat(parts) + self.nar_stage.weight[k])  # [L_i, d]
        return left_pad(xs)

    def nar_logits(self, rows: list[Utterance], stages: list[int]) -> list[Tensor]:
        """Per row, the logits [T_i, bins] of codebook stages[i] at every frame (one backbone pass)."""
        x, valid = self.nar_inputs(rows, stages)
        h, _ = self.nar_backbone(x, None, valid=valid)  # [B, L, d]
        length = h.shape[1]
        return [h[i, length - u.codes.shape[1]:] @ self.nar_head[k - 1].T for i, (u, k) in enumerate(zip(rows, stages))]

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: CodecBatch, rows_per_pass: int | None = 8) -> tuple[Tensor, dict[str, float]]:
        """Training loss: AR cross-entropy over codebook 1 and END + NAR cross-entropy at each row's stage, each
        the mean over all of the batch's scored positions.

        Rows go through each backbone in passes of `rows_per_pass` rows of similar length (None: one pass).
        Utterances here range from 1 to 5 s with or without a prompt, so one left-padded pass is ~40% padding;
        sorted passes of 8 rows are ~12%. The loss is the same either way (the sums are divided once)."""
        rows, stages = batch.rows, batch.stages
        ar_sum = nar_sum = 0.0
        ar_count = nar_count = 0
        for part in self._passes([self._ar_length(u) for u in rows], rows_per_pass):
            x, valid, targets = self.ar_inputs([rows[i] for i in part])
            h, _ = self.ar_backbone(x, None, valid=valid)  # [b, L, d]
            scored = targets != IGNORE  # [b, L]
            ar_sum = ar_sum + F.cross_entropy(self.ar_head(h[scored]), targets[scored], reduction="sum")
            ar_count += int(scored.sum())
        for part in self._passes([self._nar_length(u) for u in rows], rows_per_pass):
            logits = self.nar_logits([rows[i] for i in part], [stages[i] for i in part])
            targets = torch.cat([rows[i].codes[stages[i]] for i in part]).to(self.device)  # [N]
            nar_sum = nar_sum + F.cross_entropy(torch.cat(logits), targets, reduction="sum")
            nar_count += len(targets)
        ar, nar = ar_sum / ar_count, nar_sum / nar_count
        return ar + nar, {"ar_ce": ar.item(), "nar_ce": nar.item()}

    @staticmethod
    def _passes(lengths: list[int], rows_per_pass: int | None) -> list[list[int]]:
        """Row indices sorted by length, in groups of `rows_per_pass` (one group when None)."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        size = rows_per_pass or len(order)
        return [order[i: i + size] for i in range(0, len(order), size)]

    @staticmethod
    def _prompt_frames(u: Utterance) -> int:
        return 0 if u.prompt_codes is None else u.prompt_codes.shape[1]

    def _ar_length(self, u: Utterance) -> int:
        """Positions of the row in `ar_inputs`: `<s> [PROMPT-TEXT] TEXT <audio>`, the prompt and the target codes."""
        return len(u.prompt_text) + len(u.text) + 2 + self._prompt_frames(u) + u.codes.shape[1]

    def _nar_length(self, u: Utterance) -> int:
        """Positions of the row in `nar_inputs`: the AR's, then `</audio>` and one query per frame."""
        return self._ar_length(u) + 1 + u.codes.shape[1]

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def codec(self) -> nn.Module:
        return self.codecs["audio"]

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """config.json, model.safetensors, tokenizer.model and the codec's sub-folder, with checksums.json,
        renamed into place at once (the layout of `LatentLM.save_pretrained`)."""
        if self.tokenizer is None or "audio" not in self.codecs:
            raise ValueError("a CodecLM needs its tokenizer and codec to be saved")
        with atomic_dir(directory) as tmp:
            write_config(tmp, self.config.model_dump(mode="json"))
            save_weights(self, tmp, dtype, exclude=("codecs.",))
            shutil.copyfile(self.tokenizer.path, tmp / TOKENIZER_FILE)
            save_codec(self.codec, tmp / self.config.codec, dtype)
            write_checksums(tmp)
        self.tokenizer = TextTokenizer(Path(directory) / TOKENIZER_FILE)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, verify: bool = True) -> "CodecLM":
        """Load a baseline checkpoint folder (or hub id); `verify` checks the recorded SHA-256 of each file."""
        directory = resolve_checkpoint(name_or_path)
        raw = read_config(directory, verify)
        if raw.get("kind") != "codec_lm":
            raise CheckpointError(f"{directory / CONFIG_FILE} is not a codec-token baseline (no kind: codec_lm); "
                                  "load it with LatentLM.from_pretrained")
        try:
            config = CodecLMConfig.model_validate(raw)
        except ValueError as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(f"{directory / CONFIG_FILE} is not a valid baseline config ({first})") from None
        tokenizer = load_saved_tokenizer(directory, config.vocab_size, verify)
        model = cls(config, tokenizer, load_codec(directory / config.codec, verify))
        load_weights(model, directory, exclude=("codecs.",), verify=verify)
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("codecs."))

    def describe(self) -> str:
        return json.dumps({"parameters": self.num_parameters(), **self.config.model_dump(mode="json")}, indent=2)
