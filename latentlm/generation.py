"""Next-token diffusion sampling: text prompt -> image latents -> pixels.

Classifier-free guidance runs the conditional stream (prompt + `<image>`) and the unconditional one
(`<image>` alone) as one batch through the backbone, with a KV cache. Each sampled latent is fed
back to both streams, as in MAR. With a fixed seed the output is deterministic on CPU.

Speed: a picture is 64 latents x 20 solver steps of a tiny MLP plus 64 one-token backbone steps, all
on [2 x batch, 256] tensors, so overhead sets the time. One `LatentSampler` serves the whole picture
batch, everything runs in inference mode, and up to `ONE_THREAD_PICTURES` pictures per batch sampling
and decoding run on one intra-op thread (`tiny_op_threads`): a second thread gains nothing on ops this
small and, beside another busy process, made a picture tens of times slower. The straightforward loop
is kept as `sample_image_latents_reference`; the fast path gives its numbers bit for bit at the same
thread setting. Across thread settings torch itself can differ in the last bits (the prefill's masked
attention at batch > 1 with prompts of different lengths; the decoder's convolutions), so the pictures
equal those the old code drew in one thread (OMP_NUM_THREADS=1); at batch 1 they also equalled its
two-thread pictures wherever we compared. Both paths take an optional `PhaseClock` that books wall
time to "backbone", "head", "solver" (and, in `generate_images`, "decode"): the benchmark's split.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from latentlm.diffusion_head import NO_CLOCK, PhaseClock, tiny_op_threads
from latentlm.errors import PromptError
from latentlm.images import to_pil
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.sequence import Latent, Sequence, Text, collate

# Up to this many pictures per batch, sampling and decoding run on one intra-op thread (see
# `tiny_op_threads`): the head's ops are then [2 x batch, 256] and the decoder's small; read at call time.
ONE_THREAD_PICTURES = 32


def prompt_ids(model: LatentLM, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty; describe the picture, e.g. 'a red circle above a blue square'")
    return model.tokenizer.encode(prompt.strip())


def _check(steps: int, temperature: float) -> None:
    if steps < 1:
        raise ValueError(f"steps={steps}: use at least 1 sampling step")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature (1 = the model's own noise)")


def _prefill_batch(model: LatentLM, prompts: list[str], guided: bool, contexts: list[Sequence] | None = None):
    """Conditional rows (prompt + `<image>`), then, guided, as many unconditional ones (`<image>` alone).

    `contexts` (one per prompt, may be empty) go between `<s>` and the prompt in both streams: in-context
    demonstrations (`latentlm.in_context_prompting`), so guidance strengthens the prompt, not them."""
    tok = model.tokenizer
    image = tok.token_id("<image>")
    empty = torch.zeros(0, model.config.latent_dim)
    contexts = contexts if contexts is not None else [[] for _ in prompts]
    if len(contexts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(contexts)} contexts; give one context per prompt")
    cond = [[Text([tok.bos_id]), *c, Text(prompt_ids(model, p) + [image]), Latent("image", empty)]
            for p, c in zip(prompts, contexts)]
    uncond = [[Text([tok.bos_id]), *c, Text([image]), Latent("image", empty)] for c in contexts] if guided else []
    return collate(cond + uncond, model.config.latent_width, tok.pad_id)


def _feed_latent(model: LatentLM, z: Tensor, i: int, guided: bool, state):
    """One backbone step on latent `z` [B, D] (to both streams when guided) as image slot i + 1."""
    z_in = torch.cat([z, z]) if guided else z  # [2B or B, D]
    n = z_in.shape[0]
    ids = torch.full((n, 1), model.tokenizer.pad_id, dtype=torch.long)
    slot = torch.full((n, 1), i + 1, dtype=torch.long)
    x = model.embed_inputs(ids, z_in[:, None], torch.ones(n, 1, dtype=torch.bool), slot)
    return model.backbone(x, state)


@torch.no_grad()
def sample_image_latents(
    model: LatentLM,
    prompts: list[str],
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG,
    generator: torch.Generator | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    clock: PhaseClock | None = None,
    contexts: list[Sequence] | None = None,
) -> Tensor:
    """Sample normalised image latents for each prompt: -> [B, N, latent_dim]. `contexts`: see `_prefill_batch`."""
    _check(steps, temperature)
    clock = clock or NO_CLOCK
    guided = cfg_scale != 1.0
    batch = _prefill_batch(model, prompts, guided, contexts)
    b = len(prompts)
    with tiny_op_threads(b, ONE_THREAD_PICTURES), torch.inference_mode():  # less bookkeeping per op than no_grad
        clock.lap("other")
        h, state = model(batch)  # prefill both streams: [2B or B, T, d]
        sampler = model.diffusion.latent_sampler(b, guided, cfg_scale, steps, temperature, h.device)
        clock.lap("backbone")
        out = []
        for i in range(model.config.image_tokens):
            z = sampler(h[:, -1], generator, clock)  # conditions [2B or B, d] -> [B, D]
            out.append(z)
            if i + 1 == model.config.image_tokens:
                break
            h, state = _feed_latent(model, z, i, guided, state)
            clock.lap("backbone")
    return torch.stack(out, dim=1)  # [B, N, D], an ordinary tensor (made outside inference mode)


@torch.no_grad()
def sample_image_latents_reference(
    model: LatentLM,
    prompts: list[str],
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG,
    generator: torch.Generator | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    clock: PhaseClock | None = None,
) -> Tensor:
    """`sample_image_latents` as the straightforward loop: `DiffusionHead.sample_reference` per latent (a
    new scheduler, the whole MLP every step), at the process's thread setting. Kept as the reference."""
    _check(steps, temperature)
    clock = clock or NO_CLOCK
    guided = cfg_scale != 1.0
    batch = _prefill_batch(model, prompts, guided)
    b = len(prompts)
    clock.lap("other")
    h, state = model(batch)  # prefill both streams: [2B or B, T, d]
    clock.lap("backbone")
    out = []
    for i in range(model.config.image_tokens):
        c = h[:, -1]  # [2B or B, d]
        z = model.diffusion.sample_reference(c[:b], c[b:] if guided else None, cfg_scale, steps, generator,
                                             temperature, clock)
        out.append(z)
        if i + 1 == model.config.image_tokens:
            break
        h, state = _feed_latent(model, z, i, guided, state)
        clock.lap("backbone")
    return torch.stack(out, dim=1)  # [B, N, D]


@torch.no_grad()
def decode_latents(model: LatentLM, z: Tensor) -> Tensor:
    """Normalised image latents [B, N, D] -> pixels [B, 3, H, W] in [-1, 1] (one thread at small batch)."""
    if "image" not in model.codecs:
        raise ValueError("this model has no image codec; it cannot generate pictures")
    codec = model.codecs["image"]
    with tiny_op_threads(z.shape[0], ONE_THREAD_PICTURES):
        return codec.decode(codec.denormalize(z))


@torch.no_grad()
def generate_images(
    model: LatentLM, prompts: list[str], steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE, clock: PhaseClock | None = None, contexts: list[Sequence] | None = None,
) -> list[Image.Image]:
    """Prompts -> PIL images, deterministic for a given seed on CPU. `clock` books "decode" too; `contexts`
    are in-context demonstrations before each prompt (see `_prefill_batch`)."""
    if "image" not in model.codecs:
        raise ValueError("this model has no image codec; it cannot generate pictures")
    clock = clock or NO_CLOCK
    generator = torch.Generator().manual_seed(seed)
    z = sample_image_latents(model, prompts, steps, cfg_scale, generator, temperature, clock, contexts)  # [B, N, D]
    clock.lap("other")
    images = [to_pil(p) for p in decode_latents(model, z)]  # [B, 3, H, W] -> PIL
    clock.lap("decode")
    return images
