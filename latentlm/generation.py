"""Next-token diffusion sampling: text prompt -> image latents -> pixels.

Classifier-free guidance runs the conditional stream (prompt + `<image>`) and the unconditional one
(`<image>` alone) as one batch through the backbone, with a KV cache. Each sampled latent is fed
back to both streams, as in MAR. With a fixed seed the output is deterministic on CPU.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from latentlm.errors import PromptError
from latentlm.images import to_pil
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.sequence import Latent, Text, collate


def prompt_ids(model: LatentLM, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty; describe the picture, e.g. 'a red circle above a blue square'")
    return model.tokenizer.encode(prompt.strip())


@torch.no_grad()
def sample_image_latents(
    model: LatentLM,
    prompts: list[str],
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG,
    generator: torch.Generator | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Tensor:
    """Sample normalised image latents for each prompt: -> [B, N, latent_dim]."""
    if steps < 1:
        raise ValueError(f"steps={steps}: use at least 1 sampling step")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature (1 = the model's own noise)")
    tok = model.tokenizer
    image = tok.token_id("<image>")
    empty = torch.zeros(0, model.config.latent_dim)
    cond = [[Text([tok.bos_id] + prompt_ids(model, p) + [image]), Latent("image", empty)] for p in prompts]
    guided = cfg_scale != 1.0
    uncond = [[Text([tok.bos_id, image]), Latent("image", empty)] for _ in prompts] if guided else []
    batch = collate(cond + uncond, model.config.latent_dim, tok.pad_id)
    b = len(prompts)

    h, state = model(batch)  # prefill both streams: [2B or B, T, d]
    out = []
    for i in range(model.config.image_tokens):
        c = h[:, -1]  # [2B or B, d]
        z = model.diffusion.sample(c[:b], c[b:] if guided else None, cfg_scale, steps, generator, temperature)
        out.append(z)
        if i + 1 == model.config.image_tokens:
            break
        z_in = torch.cat([z, z]) if guided else z  # [2B or B, D]
        n = z_in.shape[0]
        ids = torch.full((n, 1), tok.pad_id, dtype=torch.long)
        slot = torch.full((n, 1), i + 1, dtype=torch.long)
        x = model.embed_inputs(ids, z_in[:, None], torch.ones(n, 1, dtype=torch.bool), slot)
        h, state = model.backbone(x, state)
    return torch.stack(out, dim=1)  # [B, N, D]


@torch.no_grad()
def generate_images(
    model: LatentLM, prompts: list[str], steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
) -> list[Image.Image]:
    """Prompts -> PIL images, deterministic for a given seed on CPU."""
    if "image" not in model.codecs:
        raise ValueError("this model has no image codec; it cannot generate pictures")
    generator = torch.Generator().manual_seed(seed)
    z = sample_image_latents(model, prompts, steps, cfg_scale, generator, temperature)  # [B, N, D]
    codec = model.codecs["image"]
    pixels = codec.decode(codec.denormalize(z))  # [B, 3, H, W]
    return [to_pil(p) for p in pixels]
