"""Shared fixtures: a tiny tokenizer, codec and LatentLM trained in seconds, for fast tests."""
from __future__ import annotations

from pathlib import Path

import os
import sys

import pytest
import torch

torch.set_num_threads(2)


def _import_triton_under_the_interpreter() -> None:
    """Triton jits its standard library at import, so TRITON_INTERPRET must be on at the first import.

    On a CPU machine, import it here, before any test module (or latentlm.kernels) can, then drop the
    variable so the dispatcher keeps choosing the references; interpreter tests set it per test.
    """
    if torch.cuda.is_available() or "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        del os.environ["TRITON_INTERPRET"]


_import_triton_under_the_interpreter()

TINY_LM_YAML = """
tokenizer: {tokenizer}
codec: {codec}
backbone: {{d_model: 64, n_layers: 2, n_heads: 4{backbone_extra}}}
head: {{width: 64, depth: 2, batch_mul: 2}}
data: {{n_train: 128, tasks: {{t2i: 0.7, caption: 0.1, vqa: 0.1, ground: 0.1}}}}
train: {{steps: {steps}, batch_size: 8, lr: 0.003, warmup_steps: 3, log_every: 1, save_every: 10, seed: 0}}
"""


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tiny_dir) -> Path:
    from latentlm.tokenizer import shapes_corpus, train_tokenizer

    path = tiny_dir / "tokenizer.model"
    train_tokenizer(shapes_corpus(400), path)
    return path


@pytest.fixture(scope="session")
def tiny_codec_dir(tiny_dir) -> Path:
    from latentlm.checkpoint import save_codec
    from latentlm.codecs import ImageSigmaVAE, SigmaVAEConfig

    torch.manual_seed(0)
    codec = ImageSigmaVAE(SigmaVAEConfig(latent_dim=8, block_out_channels=(16, 16, 16, 16), norm_num_groups=8))
    return save_codec(codec, tiny_dir / "codec")


def write_tiny_lm_config(path: Path, tokenizer: Path, codec: Path, steps: int = 30, backbone_extra: str = "") -> Path:
    """`backbone_extra` adds backbone fields, e.g. ", kind: retnet, chunk_size: 16"."""
    path.write_text(TINY_LM_YAML.format(tokenizer=tokenizer, codec=codec, steps=steps, backbone_extra=backbone_extra))
    return path


@pytest.fixture(scope="session")
def tiny_lm_config(tiny_dir, tiny_tokenizer_path, tiny_codec_dir) -> Path:
    return write_tiny_lm_config(tiny_dir / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir)


@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tiny_lm_config) -> Path:
    """A 30-step training run from scratch; returns its run folder (final/ holds the model)."""
    from latentlm.training.lm import train_lm

    run = tiny_dir / "run"
    train_lm(tiny_lm_config, run, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run) -> Path:
    return tiny_run / "final"
