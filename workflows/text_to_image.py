"""The text-to-image workflow: one prompt in, one picture out."""
from __future__ import annotations

from PIL import Image

from latentlm.generation import generate_images
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE


def text_to_image(
    model: LatentLM, prompt: str, steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Image.Image:
    return generate_images(model, [prompt], steps=steps, cfg_scale=cfg_scale, seed=seed, temperature=temperature)[0]
