"""Depth up-scaling (training.grow_depth): a grown model computes what the old one did, and a stage can
start from a model grown by `init_grow`."""
from __future__ import annotations

import pytest
import torch

from latentlm.config_io import load_yaml_config
from latentlm.errors import ConfigError
from latentlm.training.grow_depth import grow_blocks
from latentlm.training.lm import LatentLMTask, LMTrainConfig


def _config(tmp_path, tokenizer, codec, name: str, extra: str = "", layers: int = 2):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
tokenizer: {tokenizer}
codec: {codec}
backbone: {{d_model: 32, n_layers: {layers}, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 32, tasks: {{t2i: 0.5, vqa: 0.5}}}}
train: {{steps: 1, batch_size: 8, seed: 0}}
{extra}
""")
    return load_yaml_config(path, LMTrainConfig)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir):
    """A 2-block model with trained-looking (random, nonzero) weights, saved."""
    tmp = tmp_path_factory.mktemp("grow")
    task = LatentLMTask(_config(tmp, tiny_tokenizer_path, tiny_codec_dir, "base"), tmp)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in task.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    task.model.save_pretrained(tmp / "base")
    return task, tmp


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)[0]


def test_a_grown_backbone_computes_what_the_old_one_did(saved):
    task, _ = saved
    batch = task.batch(0, 8)
    before = _hidden(task.model, batch)
    from latentlm.model import LatentLM

    model = LatentLM.from_pretrained(saved[1] / "base")
    grow_blocks(model.backbone, [0, 1])
    assert len(model.backbone.blocks) == 4 and model.backbone.config.n_layers == 4
    assert torch.equal(_hidden(model, batch), before)
    with pytest.raises(ConfigError, match="distinct blocks"):
        grow_blocks(model.backbone, [9])


def test_a_stage_starts_from_a_grown_model(saved, tiny_tokenizer_path, tiny_codec_dir):
    task, tmp = saved
    grown_config = _config(tmp, tiny_tokenizer_path, tiny_codec_dir, "grown",
                           f"init_from: {tmp / 'base'}\ninit_grow: [1]", layers=3)
    grown = LatentLMTask(grown_config, tmp)
    batch = task.batch(0, 8)
    assert len(grown.model.backbone.blocks) == 3
    assert torch.equal(_hidden(grown.model, batch), _hidden(task.model, batch))
    assert not grown.model.backbone.blocks[2].attn.out.weight.any()  # the copy of block 1 adds nothing yet
    wrong = _config(tmp, tiny_tokenizer_path, tiny_codec_dir, "wrong", f"init_from: {tmp / 'base'}\ninit_grow: [1]")
    with pytest.raises(ConfigError, match="init_from"):
        LatentLMTask(wrong, tmp)  # 2 blocks + 1 copy is 3, not the config's 2
    with pytest.raises(ConfigError, match="init_grow grows the init_from model"):
        _config(tmp, tiny_tokenizer_path, tiny_codec_dir, "orphan", "init_grow: [0]")
