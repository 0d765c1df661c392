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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: ops this small gain nothing from a second one, and beside a busy
    process two make such tests minutes long."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_t2i_config(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    """(name, train settings, extra top-level YAML) -> the path of a one-block text-to-image-only LM config that
    trains in seconds."""
    def write(name: str, train: str, extra: str = "") -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 16, tasks: {{t2i: 1.0}}, icl: {{every: 0}}}}
train: {{batch_size: 4, seed: 0, lr: 0.01, warmup_steps: 0, log_every: 1, save_every: 2, {train}}}
{extra}
""")
        return str(path)
    return write
