"""Where a text-to-speech model goes wrong: in each frame, or in the drift of speaking freely.

Teacher-forced, every latent is sampled from the hidden state of the *true* history (an utterance's own
latents), all frames in one pass; speaking freely, every latent follows the model's own. A model that is
intelligible teacher-forced but not freely loses its way as its history drifts. The same teacher forcing
with the words dropped (the unconditional stream) is the control: one frame of 80 ms ahead, continuing a
true history says the words even without them, so only the gap to free speech is evidence.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentlm.data.tts import spoken_example
from latentlm.sequence import collate, loss_positions


@torch.no_grad()
def teacher_forced_latents(model, text: str, latents: Tensor, with_text: bool = True, steps: int = 10,
                           cfg_scale: float = 1.0, temperature: float = 1.0,
                           generator: torch.Generator | None = None) -> Tensor:
    """Normalised latents [T, D] of an utterance (`text`, its true normalised latents [T, D]) -> each frame
    sampled from the history of the true frames before it: [T, D]. `with_text=False` drops the words (the
    unconditional stream; no guidance then)."""
    tok, head = model.tokenizer, model.diffusion_head("audio")
    words = tok.encode(text) if with_text else []
    guided = with_text and cfg_scale != 1.0
    rows = [spoken_example(tok, words, None, latents)] + ([spoken_example(tok, [], None, latents)] if guided else [])
    batch = collate(rows, model.config.latent_width, tok.pad_id)
    h, _ = model(batch)  # [1 or 2, L, d]
    where = loss_positions(batch, model.config.modalities)["audio"]  # [1 or 2, L-1]: the next one is a latent
    cond = h[:, :-1][where]  # [T or 2T, d]: conditional rows, then unconditional
    sampler = head.latent_sampler(len(latents), guided, cfg_scale, steps, temperature, h.device)
    return sampler(cond, generator)  # [T, D]
