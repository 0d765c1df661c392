"""LatentLM: one causal model over interleaved text tokens and continuous latents.

Text positions are embedded from ids and predicted by a softmax head. Latent positions are embedded
by a linear projection of the latent vector; each next latent is predicted by the per-token
diffusion head, conditioned on the backbone's hidden state at the position before it. Each modality
has its own projection and head (pictures: `latent_in`, `diffusion`; speech: `audio_in`,
`audio_diffusion`), because their latents differ in width and statistics; the backbone is shared.
A speech span ends when the text head says `</audio>` (`stop_probability`).
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
    CONFIG_FILE, TOKENIZER_FILE, atomic_dir, load_codec, load_saved_tokenizer, load_weights, read_config,
    resolve_checkpoint, save_codec, save_weights, write_checksums, write_config,
)
from latentlm.diffusion_head import DiffusionHead
from latentlm.errors import CheckpointError
from latentlm.model_config import ModelConfig
from latentlm.sequence import MODALITY_INDEX, Batch, loss_positions
from latentlm.tokenizer import TextTokenizer



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
        if config.audio_latent_dim:
            self.audio_in = nn.Linear(config.audio_latent_dim, d)
            self.audio_diffusion = DiffusionHead(config.audio_latent_dim, d, config.head)
        self.codecs = nn.ModuleDict(codecs or {})  # frozen; saved in their own sub-folders
        for p in self.codecs.parameters():
            p.requires_grad_(False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.slot_embed.weight, std=0.02)

    # ---- per-modality parts ----------------------------------------------------------------
    def latent_projection(self, modality: str) -> nn.Linear:
        self.config.width(modality)  # a clear error for a modality the model lacks
        return self.audio_in if modality == "audio" else self.latent_in

    def diffusion_head(self, modality: str) -> DiffusionHead:
        self.config.width(modality)
        return self.audio_diffusion if modality == "audio" else self.diffusion

    # ---- embedding and forward -------------------------------------------------------------
    def embed_inputs(self, ids: Tensor, latents: Tensor, is_latent: Tensor, slot: Tensor,
                     modality: Tensor | None = None) -> Tensor:
        """[B, T] ids, [B, T, D_lat] latents, [B, T] masks (modality: MODALITY_INDEX, None = all image)
        -> [B, T, d_model]."""
        x = self.embed(ids)
        for m in self.config.modalities if modality is not None else ("image",):
            mask = is_latent if modality is None else is_latent & (modality == MODALITY_INDEX[m])
            if m == "image" or mask.any():
                proj = self.latent_projection(m)
                x = torch.where(mask[..., None], proj(latents[..., :proj.in_features]), x)
        s = slot.clamp(0, self.config.max_slots - 1)
        return x + self.slot_embed(s) * (slot >= 0)[..., None]

    def forward(self, batch: Batch, state=None, latents: Tensor | None = None):
        """Hidden states [B, T, d] (and the backbone's state); `latents` replaces batch.latents as inputs."""
        latents = batch.latents if latents is None else latents
        x = self.embed_inputs(batch.ids, latents, batch.is_latent, batch.slot, batch.modality)
        return self.backbone(x, state, valid=batch.valid)

    def stop_probability(self, h: Tensor) -> Tensor:
        """p(`</audio>` next) from hidden states [..., d]: the end of a speech span -> [...]."""
        end = self.tokenizer.token_id("</audio>")
        return self.lm_head(h).float().softmax(-1)[..., end]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Diffusion loss per modality on generated latent positions + weighted cross-entropy on text
        positions (with, inside speech spans, the text head's "no `</audio>` yet" at every latent that
        another latent follows).

        Latents that are read (understanding: `Latent(..., target=False)`) are inputs only. A shard of a
        global batch (`sequence.shard_batch`) gives each term as its share of the global batch's mean
        (sum * world / global count; DDP averages the shares) and draws each row's noise from its seed.

        With `audio_input_noise`, generated speech latents are read with extra noise and still predicted
        clean, so the model leans on the text more than on its own history (which drifts when it speaks)."""
        h, _ = self(batch, latents=self._noisy_audio_inputs(batch))  # [B, T, d]
        h, nxt = h[:, :-1], slice(1, None)
        where = loss_positions(batch, self.config.modalities)
        counts = batch.loss_counts or {k: int(v.sum()) for k, v in where.items()}
        mean = lambda total, key, per_item=1: total * batch.world / max(1, counts[key] * per_item)  # noqa: E731
        total, logs = h.sum() * 0, {}
        for m in self.config.modalities:
            head = self.diffusion_head(m)
            targets = batch.latents[:, nxt][where[m]][:, : head.latent_dim]  # [N_m, D_m]
            diff = h.sum() * 0
            if targets.numel():
                noise = None if batch.row_seed is None else _row_noise(batch.row_seed + MODALITY_INDEX[m] * 997,
                                                                        where[m], head)
                diff = mean(head.loss(targets, h[where[m]], noise=noise, reduction="sum"), m,
                            head.config.batch_mul * head.latent_dim)
            total = total + diff
            logs["diffusion" if m == "image" else f"diffusion_{m}"] = diff.item()
        logits = self.lm_head(h[where["text"]])  # [N_text, V]
        ce = h.sum() * 0
        if logits.numel():
            ce = mean(F.cross_entropy(logits, batch.ids[:, nxt][where["text"]], reduction="sum"), "text")
        if where["go_on"].any():
            ce = ce + mean(self._continue_loss(h[where["go_on"]]), "go_on")
        total = total + self.config.text_loss_weight * ce
        return total, logs | {"text_ce": ce.item()}

    def _noisy_audio_inputs(self, batch: Batch) -> Tensor | None:
        """batch.latents [B, T, W] plus, at generated audio latents, noise of a std drawn per row uniformly
        in [0, audio_input_noise] (from the row's seed when it has one); None without such noise."""
        top = self.config.audio_input_noise
        where = batch.latent_target & (batch.modality == MODALITY_INDEX["audio"])  # [B, T]
        if not top or not where.any():
            return None
        b, t, _ = batch.latents.shape
        dim = self.config.audio_latent_dim
        noise = torch.zeros_like(batch.latents)
        for r in range(b):
            g = None if batch.row_seed is None else torch.Generator().manual_seed(int(batch.row_seed[r]) * 31 + 7)
            std = torch.rand((), generator=g) * top
            noise[r, :, :dim] = (torch.randn(t, dim, generator=g) * std).to(noise.device)
        return batch.latents + noise * where[..., None]

    def _continue_loss(self, h: Tensor) -> Tensor:
        """Summed -log(1 - p(`</audio>`)) at positions [N, d] that another audio latent follows (as
        -log(-expm1(log p)): exact for p near 0, where the model mostly is)."""
        log_p = self.lm_head(h).float().log_softmax(-1)[:, self.tokenizer.token_id("</audio>")]  # [N]
        one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
        return -torch.log(one_minus_p).sum()

    # ---- checkpoints ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json, model.safetensors, tokenizer.model and one sub-folder per codec, with the
        SHA-256 of each file in checksums.json (checked by `from_pretrained`), all renamed into place at once."""
        if self.tokenizer is None:
            raise ValueError("a LatentLM needs its tokenizer to be saved")
        with atomic_dir(directory) as tmp:
            write_config(tmp, self.config.model_dump(mode="json"))
            save_weights(self, tmp, dtype, exclude=("codecs.",))
            shutil.copyfile(self.tokenizer.path, tmp / TOKENIZER_FILE)
            for modality, codec in self.codecs.items():
                save_codec(codec, tmp / self.config.codecs[modality], dtype)
            write_checksums(tmp)
        self.tokenizer = TextTokenizer(Path(directory) / TOKENIZER_FILE)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, backbone: str | None = None, verify: bool = True) -> "LatentLM":
        """Load a shipped model name, a local checkpoint directory or a hub id.

        `backbone`, when given, is the backbone kind the checkpoint must hold: weights are tied to the
        backbone they were trained with, so a mismatch is an error rather than a silent swap. `verify` checks
        each file against the SHA-256 recorded at save (checksums.json; folders without one load as before)."""
        directory = resolve_checkpoint(name_or_path)
        raw = read_config(directory, verify)
        if raw.get("kind") == "codec_lm":
            raise CheckpointError(f"{directory} holds the codec-token baseline, not a LatentLM; load it with "
                                  "latentlm.codec_lm.CodecLM.from_pretrained (it speaks; `latentlm eval tts` takes it)")
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
        tokenizer = load_saved_tokenizer(directory, config.vocab_size, verify)
        codecs = {m: load_codec(directory / sub, verify) for m, sub in config.codecs.items()}
        model = cls(config, tokenizer, codecs)
        load_weights(model, directory, exclude=("codecs.",), verify=verify)
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("codecs."))

    def describe(self) -> str:
        return json.dumps({"parameters": self.num_parameters(), **self.config.model_dump(mode="json")}, indent=2)


def _row_noise(seeds: Tensor, where: Tensor, head: DiffusionHead) -> tuple[Tensor, Tensor]:
    """Noise [m*N, D] and timesteps [m*N] for the N positions of `where` [B, T-1], row b's drawn from
    seeds[b]: the same draw whichever process holds the row. Laid out as `head.loss` repeats its
    targets (m copies of all N)."""
    m, dim, steps = head.config.batch_mul, head.latent_dim, head.config.num_train_timesteps
    noise, t = [], []
    for seed, n in zip(seeds.tolist(), where.sum(1).tolist()):
        g = torch.Generator().manual_seed(seed)
        noise.append(torch.randn(m, n, dim, generator=g))  # [m, n_b, D]
        t.append(torch.randint(0, steps, (m, n), generator=g))  # [m, n_b]
    device = where.device
    return torch.cat(noise, 1).reshape(-1, dim).to(device), torch.cat(t, 1).reshape(-1).to(device)

