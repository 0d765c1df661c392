"""latentlm: multimodal latent language models with next-token diffusion.

Exports resolve lazily, so `import latentlm` stays light and no import cycle can form.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Session": "latentlm.workflows.session",
    "LatentLM": "latentlm.model",
    "ModelConfig": "latentlm.model_config",
    "TextTokenizer": "latentlm.tokenizer",
    "generate_images": "latentlm.generation",
    "LatentLMError": "latentlm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latentlm' has no attribute {name!r}")
