"""`trainable:` trains some parts of a LatentLM and freezes the rest: a head-only stage leaves every other
weight exactly as it was."""
from __future__ import annotations

import pytest
import torch

from latentlm.config_io import load_yaml_config
from latentlm.errors import ConfigError
from latentlm.model import LatentLM
from latentlm.training.lm import LMTrainConfig, train_lm


def _config_file(tmp_path, tokenizer, codec, extra: str) -> str:
    path = tmp_path / "head-only.yaml"
    path.write_text(f"""
tokenizer: {tokenizer}
codec: {codec}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 16, tasks: {{t2i: 1.0}}, icl: {{every: 0}}}}
train: {{steps: 2, batch_size: 4, seed: 0, lr: 0.01, warmup_steps: 0, log_every: 1, save_every: 2}}
{extra}
""")
    return str(path)


def test_only_the_named_parts_change(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    base = train_lm(_config_file(tmp_path, tiny_tokenizer_path, tiny_codec_dir, ""), tmp_path / "base",
                    progress=False)
    config = _config_file(tmp_path, tiny_tokenizer_path, tiny_codec_dir,
                          f"init_from: {base}\ntrainable: [diffusion.]")
    tuned = train_lm(config, tmp_path / "tuned", progress=False)
    before, after = LatentLM.from_pretrained(base).state_dict(), LatentLM.from_pretrained(tuned).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("diffusion.") for k in changed)


def test_a_prefix_that_names_nothing_is_a_config_error(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    config = load_yaml_config(_config_file(tmp_path, tiny_tokenizer_path, tiny_codec_dir, "trainable: [difusion.]"),
                              LMTrainConfig)
    from latentlm.training.lm import LatentLMTask

    with pytest.raises(ConfigError, match=r"trainable: \['difusion.'\] name no trainable parameter"):
        LatentLMTask(config, tmp_path)
