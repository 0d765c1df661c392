"""LatentLM: one causal model over interleaved text tokens and continuous latents.

Text positions are embedded from ids and predicted by a softmax head. Latent positions are embedded
by a linear projection of the latent vector; each next latent is predicted by the per-token
diffusion head, conditioned on the backbone's hidden state at the position before it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.backbones import build_backbone
from latentlm.checkpoint import (
    CONFIG_FILE, atomic_dir, load_codec, load_weights, read_config, resolve_checkpoint, save_codec,
    save_weights, write_config,
)
from latentlm.diffusion_head import DiffusionHead
from latentlm.errors import CheckpointError
from latentlm.model_config import ModelConfig
from latentlm.sequence import Batch
from latentlm.tokenizer import TextTokenizer

TOKENIZER_FILE = "tokenizer.model"


class LatentLM(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: TextTokenizer | None = None,
                 codecs: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        d = config.backbone.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.latent_in = nn.Linear(config.latent_dim, d)
        self.slot_embed = nn.Embedding(config.max_slots, d)
        self.backbone = build_backbone(config.backbone)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.diffusion = DiffusionHead(config.latent_dim, d, config.head)
        self.codecs = nn.ModuleDict(codecs or {})  # frozen; saved in their own sub-folders
        for p in self.codecs.parameters():
            p.requires_grad_(False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.slot_embed.weight, std=0.02)

    # ---- embedding and forward -------------------------------------------------------------
    def embed_inputs(self, ids: Tensor, latents: Tensor, is_latent: Tensor, slot: Tensor) -> Tensor:
        """[B, T] ids, [B, T, D_lat] latents, [B, T] masks -> [B, T, d_model]."""
        x = torch.where(is_latent[..., None], self.latent_in(latents), self.embed(ids))
        s = slot.clamp(0, self.config.max_slots - 1)
        return x + self.slot_embed(s) * (slot >= 0)[..., None]

    def forward(self, batch: Batch, state=None):
        x = self.embed_inputs(batch.ids, batch.latents, batch.is_latent, batch.slot)
        return self.backbone(x, state, valid=batch.valid)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Diffusion loss on generated latent positions + weighted cross-entropy on text positions.

        Latents that are read (understanding: `Latent(..., target=False)`) are inputs only."""
        h, _ = self(batch)  # [B, T, d]
        h, nxt = h[:, :-1], slice(1, None)
        both_valid = batch.valid[:, :-1] & batch.valid[:, nxt]
        latent_next = both_valid & batch.latent_target[:, nxt]  # [B, T-1]
        text_next = both_valid & ~batch.is_latent[:, nxt]
        targets = batch.latents[:, nxt][latent_next]  # [N_lat, D]
        diff = self.diffusion.loss(targets, h[latent_next]) if targets.numel() else h.sum() * 0
        logits = self.lm_head(h[text_next])  # [N_text, V]
        ce = F.cross_entropy(logits, batch.ids[:, nxt][text_next]) if logits.numel() else h.sum() * 0
        total = diff + self.config.text_loss_weight * ce
        return total, {"diffusion": diff.item(), "text_ce": ce.item()}

    # ---- checkpoints ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json, model.safetensors, tokenizer.model and one sub-folder per codec."""
        if self.tokenizer is None:
            raise ValueError("a LatentLM needs its tokenizer to be saved")
        with atomic_dir(directory) as tmp:
            write_config(tmp, self.config.model_dump(mode="json"))
            save_weights(self, tmp, dtype, exclude=("codecs.",))
            shutil.copyfile(self.tokenizer.path, tmp / TOKENIZER_FILE)
            for modality, codec in self.codecs.items():
                save_codec(codec, tmp / self.config.codecs[modality], dtype)
        self.tokenizer = TextTokenizer(Path(directory) / TOKENIZER_FILE)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, backbone: str | None = None) -> "LatentLM":
        """Load a shipped model name, a local checkpoint directory or a hub id.

        `backbone`, when given, is the backbone kind the checkpoint must hold: weights are tied to the
        backbone they were trained with, so a mismatch is an error rather than a silent swap."""
        directory = resolve_checkpoint(name_or_path)
        raw = read_config(directory)
        try:
            config = ModelConfig.model_validate(raw)
        except ValueError as e:
            first = str(e).splitlines()[0:3]
            raise CheckpointError(f"{directory / CONFIG_FILE} is not a LatentLM config ({' '.join(first)})") from None
        if backbone is not None and config.backbone.kind != backbone:
            raise CheckpointError(
                f"model {str(name_or_path)!r} was trained with the {config.backbone.kind} backbone, not {backbone}; "
                f"pass a model trained with `latentlm train CONFIG --backbone {backbone}`, or drop --backbone"
            )
        tokenizer = TextTokenizer(directory / TOKENIZER_FILE)
        if tokenizer.vocab_size != config.vocab_size:
            raise CheckpointError(
                f"{directory / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but {directory / CONFIG_FILE} "
                f"expects {config.vocab_size}; use the tokenizer saved with this model"
            )
        codecs = {m: load_codec(directory / sub) for m, sub in config.codecs.items()}
        model = cls(config, tokenizer, codecs)
        load_weights(model, directory, exclude=("codecs.",))
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("codecs."))

    def describe(self) -> str:
        return json.dumps({"parameters": self.num_parameters(), **self.config.model_dump(mode="json")}, indent=2)
