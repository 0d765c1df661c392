"""Text decoding: the model reads a prefix (text and pictures) and writes text after it.

Greedy by default, so the same input gives the same output. All rows of a batch are prefilled
together (left-padded by `collate`, so they end at the same position) and decoded with the backbone's
state; a row is finished at `</s>` or after `max_new_tokens`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentlm.diffusion_head import tiny_op_threads
from latentlm.generation import ONE_THREAD_PICTURES
from latentlm.model import LatentLM
from latentlm.sequence import Sequence, collate

DEFAULT_MAX_NEW_TOKENS = 64


@torch.no_grad()
def generate_text(model: LatentLM, prefixes: list[Sequence], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  stop: tuple[int, ...] = ()) -> list[list[int]]:
    """Continue each prefix greedily until `</s>` or a `stop` id: -> the new ids of each row (without it).

    Small batches run with one intra-op thread (a caption took 1.5 s with two threads and 0.02 s with
    one on a 2-core machine: BENCHMARKS.md "Generation speed")."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: allow at least one new token")
    with tiny_op_threads(len(prefixes), ONE_THREAD_PICTURES):
        return _greedy(model, prefixes, max_new_tokens, stop)


def _greedy(model: LatentLM, prefixes: list[Sequence], max_new_tokens: int, stop: tuple[int, ...] = ()
            ) -> list[list[int]]:
    tok = model.tokenizer
    ends = torch.tensor([tok.eos_id, *stop])
    batch = collate(prefixes, model.config.latent_width, tok.pad_id)
    h, state = model(batch)  # [B, T, d]
    b = len(prefixes)
    out: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(max_new_tokens):
        nxt = model.lm_head(h[:, -1]).argmax(-1)  # [B]
        ended = torch.isin(nxt, ends)  # [B]
        for i in range(b):
            if not done[i] and not ended[i]:
                out[i].append(nxt[i].item())
        done |= ended
        if done.all():
            break
        h, state = model.backbone(_embed_tokens(model, nxt), state)
    return out


def _embed_tokens(model: LatentLM, ids: Tensor) -> Tensor:
    """[B] token ids -> [B, 1, d_model] inputs of one decoding step."""
    ids = ids[:, None]  # [B, 1]
    zeros = torch.zeros(ids.shape[0], 1, model.config.latent_width)
    no = torch.zeros_like(ids, dtype=torch.bool)
    return model.embed_inputs(ids, zeros, no, torch.full_like(ids, -1))


@torch.no_grad()
def sample_text(model: LatentLM, prefix: Sequence, generator: torch.Generator, temperature: float = 1.0,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop: tuple[int, ...] = (), banned: tuple[int, ...] = (),
                ) -> list[int]:
    """Continue one prefix by sampling at `temperature` (seeded by `generator`) until a `stop` id or `</s>`:
    -> the new ids, without the stop id. `banned` ids are never drawn; the stop ids not as the first token,
    so the text is never empty. Deterministic for a generator's seed on CPU."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature (greedy decoding: generate_text)")
    tok = model.tokenizer
    stops = {*stop, tok.eos_id}
    with tiny_op_threads(1, ONE_THREAD_PICTURES):
        h, state = model(collate([prefix], model.config.latent_width, tok.pad_id))  # [1, T, d]
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = model.lm_head(h[0, -1]).float() / temperature  # [V]
            logits[list(banned) + (sorted(stops) if not out else [])] = -float("inf")
            nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
            if nxt in stops:
                break
            out.append(nxt)
            h, state = model.backbone(_embed_tokens(model, torch.tensor([nxt])), state)
    return out
