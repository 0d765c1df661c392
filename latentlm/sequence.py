"""The interleaved sequence format (docs/design.md §3) and the one collate function.

A `Sequence` is a list of segments, each `Text(ids)` or `Latent(modality, z, target)`. A latent span
is framed by `<image>`...`</image>` (or the audio markers). The order sets the direction: a span after
its caption is generated (`target=True`: the diffusion head learns it), a span before the task text is
read (`target=False`: an input only, no diffusion loss). Flattened, every position holds either a
token id or a latent vector; `collate` left-pads a list of sequences into one `Batch`, so that all
rows end together and decoding continues every row at the same step.

Modalities differ in latent width (image 16, audio 32): a batch's latent tensor is as wide as the
widest, narrower latents are zero-padded, and `Batch.modality` says which projection and diffusion
head a position belongs to. An image span has a fixed length; an audio span ends when the model says
so, so every position from `<audio>` to the span's last latent carries a stop label (`audio_stop`: 0
= another latent follows, 1 = `</audio>` follows) for the text head to learn the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor

Modality = Literal["image", "audio"]
SPAN_MARKERS: dict[str, tuple[str, str]] = {"image": ("<image>", "</image>"), "audio": ("<audio>", "</audio>")}
MODALITY_INDEX: dict[str, int] = {"image": 0, "audio": 1}  # Batch.modality; -1 at text positions


@dataclass
class Text:
    ids: list[int]


@dataclass
class Latent:
    modality: Modality
    z: Tensor  # [N, latent_dim]
    target: bool = True  # predicted by the diffusion head (generation); False: read as input (understanding)


Segment = Union[Text, Latent]
Sequence = list[Segment]


@dataclass
class Batch:
    ids: Tensor  # [B, T] long; pad id at latent and padding positions
    latents: Tensor  # [B, T, D] float; zeros at text positions
    is_latent: Tensor  # [B, T] bool
    slot: Tensor  # [B, T] long; at a position whose NEXT element is a latent: that latent's index in its span, else -1
    valid: Tensor  # [B, T] bool; False at padding
    latent_target: Tensor  # [B, T] bool; latent positions the diffusion head learns (a subset of is_latent)
    modality: Tensor  # [B, T] long; MODALITY_INDEX at latent positions, -1 elsewhere
    audio_stop: Tensor  # [B, T] long; in an audio span: 1 if `</audio>` comes next, 0 if a latent does; else -1
    # One process's shard of a global batch (training on several processes, `shard_batch`):
    row_seed: Tensor | None = None  # [B] long: each row's diffusion-noise seed, from its place in the global batch
    loss_counts: dict[str, int] | None = None  # positions per loss term in the global batch (`loss_positions`)
    world: int = 1  # processes that share the global batch

    TENSORS = ("ids", "latents", "is_latent", "slot", "valid", "latent_target", "modality", "audio_stop")

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.TENSORS), self.row_seed, self.loss_counts, self.world)

    def passes(self, rows_per_pass: int) -> list["Batch"]:
        """The rows in groups of `rows_per_pass` of similar length (sorted), each cut to its own longest row: less
        padding for the backbone. Each group keeps the batch's loss counts and its rows' noise seeds, so the
        groups' losses sum to the batch's (`LatentLM.loss`). One group, the batch itself, when it is small."""
        if len(self.valid) <= rows_per_pass:
            return [self]
        if self.row_seed is None or self.loss_counts is None:
            raise ValueError("passes need each row's noise seed and the batch's loss counts (sequence.shard_batch)")
        lengths = self.valid.sum(1)  # [B]
        order = torch.argsort(lengths, stable=True)
        out = []
        for rows in order.split(rows_per_pass):
            keep = int(lengths[rows].max())  # rows are left-padded: their last `keep` positions
            out.append(Batch(*(getattr(self, f)[rows][:, -keep:] for f in self.TENSORS), self.row_seed[rows],
                             self.loss_counts, self.world))
        return out


def loss_positions(batch: Batch, modalities) -> dict[str, Tensor]:
    """Where each loss term is taken, as masks [B, T-1] over the prediction at t of position t+1: the
    diffusion loss of each modality, "text" (cross-entropy) and "go_on" (a latent, not `</audio>`, follows)."""
    nxt = slice(1, None)
    both_valid = batch.valid[:, :-1] & batch.valid[:, nxt]
    out = {m: both_valid & batch.latent_target[:, nxt] & (batch.modality[:, nxt] == MODALITY_INDEX[m])
           for m in modalities}
    out["text"] = both_valid & ~batch.is_latent[:, nxt]
    out["go_on"] = both_valid & (batch.audio_stop[:, :-1] == 0)
    return out


def shard_batch(seqs: list[Sequence], rank: int, world: int, seed: int, modalities, latent_dim: int,
                pad_id: int) -> Batch:
    """Process `rank`'s rows of a global batch, with what makes its loss the global batch's: the loss
    positions counted over all rows, and a noise seed per row (`seed` * 4096 + its global index). With
    them, N processes with a shard each take the same gradient step as one process with every row."""
    if len(seqs) % world:
        raise ValueError(f"a batch of {len(seqs)} rows does not split over {world} processes")
    b = len(seqs) // world
    whole = collate(seqs, latent_dim, pad_id)
    counts = {k: int(v.sum()) for k, v in loss_positions(whole, modalities).items()}
    mine = collate(seqs[rank * b:(rank + 1) * b], latent_dim, pad_id) if world > 1 else whole
    mine.row_seed = seed * 4096 + torch.arange(rank * b, (rank + 1) * b)  # [b]
    mine.loss_counts, mine.world = counts, world
    return mine


def frame(modality: Modality, z: Tensor, marker_id, target: bool = True) -> Sequence:
    """The span `<m> z_1 .. z_N </m>` as segments, with `marker_id(name) -> id`."""
    start, end = SPAN_MARKERS[modality]
    return [Text([marker_id(start)]), Latent(modality, z, target), Text([marker_id(end)])]


class _Flat:
    """One sequence laid out position by position."""

    def __init__(self, latent_dim: int) -> None:
        self.ids: list[int] = []
        self.latents: list[Tensor] = [torch.zeros(0, latent_dim)]
        self.is_latent: list[bool] = []
        self.slot: list[int] = []
        self.target: list[bool] = []
        self.modality: list[int] = []
        self.stop: list[int] = []

    def add_text(self, ids: list[int], latent_dim: int) -> None:
        n = len(ids)
        self.ids += ids
        self.latents.append(torch.zeros(n, latent_dim))
        self.is_latent += [False] * n
        self.slot += [-1] * n
        self.target += [False] * n
        self.modality += [-1] * n
        self.stop += [-1] * n


def flatten(seq: Sequence, latent_dim: int, pad_id: int) -> _Flat:
    """One sequence -> its positions (ids, latents [T, D], is_latent, slot, target, modality, stop)."""
    f = _Flat(latent_dim)
    for seg in seq:
        if isinstance(seg, Text):
            f.add_text(seg.ids, latent_dim)
            continue
        n, width = seg.z.shape[0], seg.z.shape[-1]
        if seg.z.ndim != 2 or width > latent_dim:
            raise ValueError(f"latent segment must be [N, <= {latent_dim}], got {list(seg.z.shape)}")
        audio = seg.modality == "audio"
        if f.slot and not audio:
            f.slot[-1] = 0  # the position before an image span predicts its latent 0
        if audio and f.stop:
            f.stop[-1] = 0  # `<audio>` (or the voice prompt's last latent) is followed by a latent
        if n == 0:  # an open span, to be generated: only the slot of its first latent is set
            continue
        f.ids += [pad_id] * n
        f.latents.append(torch.nn.functional.pad(seg.z.float(), (0, latent_dim - width)))
        f.is_latent += [True] * n
        f.slot += [-1] * n if audio else list(range(1, n)) + [-1]
        f.target += [seg.target] * n
        f.modality += [MODALITY_INDEX[seg.modality]] * n
        f.stop += [0] * (n - 1) + [1] if audio else [-1] * n
    return f


def collate(seqs: list[Sequence], latent_dim: int, pad_id: int) -> Batch:
    """Left-pad sequences to one length: [B, T] tensors (and [B, T, D] latents)."""
    flat = [flatten(s, latent_dim, pad_id) for s in seqs]
    t = max(len(f.ids) for f in flat)
    b = len(seqs)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    latents = torch.zeros(b, t, latent_dim)
    is_latent = torch.zeros(b, t, dtype=torch.bool)
    slot = torch.full((b, t), -1, dtype=torch.long)
    valid = torch.zeros(b, t, dtype=torch.bool)
    target = torch.zeros(b, t, dtype=torch.bool)
    modality = torch.full((b, t), -1, dtype=torch.long)
    stop = torch.full((b, t), -1, dtype=torch.long)
    for i, f in enumerate(flat):
        n = len(f.ids)
        ids[i, t - n:] = torch.tensor(f.ids, dtype=torch.long)
        latents[i, t - n:] = torch.cat(f.latents)
        is_latent[i, t - n:] = torch.tensor(f.is_latent, dtype=torch.bool)
        slot[i, t - n:] = torch.tensor(f.slot, dtype=torch.long)
        valid[i, t - n:] = True
        target[i, t - n:] = torch.tensor(f.target, dtype=torch.bool)
        modality[i, t - n:] = torch.tensor(f.modality, dtype=torch.long)
        stop[i, t - n:] = torch.tensor(f.stop, dtype=torch.long)
    return Batch(ids, latents, is_latent, slot, valid, target, modality, stop)
