"""The interleaved sequence format (DESIGN.md §3) and the one collate function.

A `Sequence` is a list of segments, each `Text(ids)` or `Latent(modality, z)`. A latent span is
framed by `<image>`...`</image>` (or the audio markers). Flattened, every position holds either a
token id or a latent vector; `collate` left-pads a list of sequences into one `Batch`, so that all
rows end together and decoding continues every row at the same step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor

Modality = Literal["image", "audio"]
SPAN_MARKERS: dict[str, tuple[str, str]] = {"image": ("<image>", "</image>"), "audio": ("<audio>", "</audio>")}


@dataclass
class Text:
    ids: list[int]


@dataclass
class Latent:
    modality: Modality
    z: Tensor  # [N, latent_dim]


Segment = Union[Text, Latent]
Sequence = list[Segment]


@dataclass
class Batch:
    ids: Tensor  # [B, T] long; pad id at latent and padding positions
    latents: Tensor  # [B, T, D] float; zeros at text positions
    is_latent: Tensor  # [B, T] bool
    slot: Tensor  # [B, T] long; at a position whose NEXT element is a latent: that latent's index in its span, else -1
    valid: Tensor  # [B, T] bool; False at padding

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in ("ids", "latents", "is_latent", "slot", "valid")))


def frame(modality: Modality, z: Tensor, marker_id) -> Sequence:
    """The span `<m> z_1 .. z_N </m>` as segments, with `marker_id(name) -> id`."""
    start, end = SPAN_MARKERS[modality]
    return [Text([marker_id(start)]), Latent(modality, z), Text([marker_id(end)])]


def flatten(seq: Sequence, latent_dim: int, pad_id: int) -> tuple[list[int], Tensor, list[bool], list[int]]:
    """One sequence -> (ids, latents [T, D], is_latent, slot)."""
    ids: list[int] = []
    latents: list[Tensor] = []
    is_latent: list[bool] = []
    slot: list[int] = []
    for seg in seq:
        if isinstance(seg, Text):
            ids += seg.ids
            latents.append(torch.zeros(len(seg.ids), latent_dim))
            is_latent += [False] * len(seg.ids)
            slot += [-1] * len(seg.ids)
        else:
            n = seg.z.shape[0]
            if seg.z.ndim != 2 or seg.z.shape[1] != latent_dim:
                raise ValueError(f"latent segment must be [N, {latent_dim}], got {list(seg.z.shape)}")
            if slot:
                slot[-1] = 0  # the position before the span predicts latent 0
            if n == 0:  # an open span, to be generated: only the slot of its first latent is set
                continue
            ids += [pad_id] * n
            latents.append(seg.z.float())
            is_latent += [True] * n
            slot += list(range(1, n)) + [-1]
    return ids, torch.cat(latents) if latents else torch.zeros(0, latent_dim), is_latent, slot


def collate(seqs: list[Sequence], latent_dim: int, pad_id: int) -> Batch:
    """Left-pad sequences to one length: [B, T] tensors (and [B, T, D] latents)."""
    flat = [flatten(s, latent_dim, pad_id) for s in seqs]
    t = max(len(f[0]) for f in flat)
    b = len(seqs)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    latents = torch.zeros(b, t, latent_dim)
    is_latent = torch.zeros(b, t, dtype=torch.bool)
    slot = torch.full((b, t), -1, dtype=torch.long)
    valid = torch.zeros(b, t, dtype=torch.bool)
    for i, (f_ids, f_lat, f_is, f_slot) in enumerate(flat):
        n = len(f_ids)
        ids[i, t - n:] = torch.tensor(f_ids, dtype=torch.long)
        latents[i, t - n:] = f_lat
        is_latent[i, t - n:] = torch.tensor(f_is, dtype=torch.bool)
        slot[i, t - n:] = torch.tensor(f_slot, dtype=torch.long)
        valid[i, t - n:] = True
    return Batch(ids, latents, is_latent, slot, valid)
