"""In-context training sequences: demonstrations of the query's task before it (Kosmos-1 interleaving)."""
from __future__ import annotations

import random

import pytest
import torch

from latentlm.config_io import load_yaml_config
from latentlm.data.in_context import ICLConfig, demonstration, task_key
from latentlm.data.shapes import scene_for
from latentlm.sequence import Latent, Text
from latentlm.tokenizer import TextTokenizer
from latentlm.training.lm import LatentLMTask, LMTrainConfig


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir):
    path = tmp_path_factory.mktemp("icl") / "lm.yaml"
    path.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 64, tasks: {{t2i: 0.5, vqa: 0.3, ground: 0.2}}, icl: {{every: 3, demos: [2, 2], batch_divisor: 4}}}}
train: {{steps: 1, batch_size: 16, seed: 0}}
""")
    return LatentLMTask(load_yaml_config(path, LMTrainConfig), path.parent)


def spans(batch, row):
    """Image spans of one row as (length, generated?) pairs."""
    out, run, target = [], 0, False
    for is_lat, tgt in zip(batch.is_latent[row].tolist(), batch.latent_target[row].tolist()):
        if is_lat:
            run, target = run + 1, tgt
        elif run:
            out.append((run, target))
            run = 0
    return out


def test_every_third_step_is_an_in_context_batch_of_fewer_longer_sequences(task):
    plain, icl = task.batch(0, 16), task.batch(2, 16)
    assert plain.ids.shape[0] == 16 and icl.ids.shape[0] == 4
    for row in range(4):
        s = spans(icl, row)
        assert len(s) == 3 and all(n == 64 for n, _ in s)
        assert not s[0][1] and not s[1][1]  # demonstrations are read, never generated
    assert torch.equal(task.batch(2, 16).ids, icl.ids)  # a pure function of the step


def test_a_demonstration_solves_the_same_task_on_another_scene(tiny_tokenizer_path):
    tok = TextTokenizer(tiny_tokenizer_path)
    scene, means = scene_for("train", 3), torch.zeros(64, 8)
    shown = demonstration("t2i", scene, means, tok, random.Random(0))
    assert shown[0].ids == tok.encode(scene.caption) and isinstance(shown[2], Latent) and not shown[2].target
    asked = demonstration("vqa:count", scene, means, tok, random.Random(0))
    assert isinstance(asked[-1], Text) and "how many" in tok.decode(asked[-1].ids)
    assert task_key("vqa", "vqa:colour") == "vqa:colour" and task_key("ground", "ground") == "ground"


def test_icl_config_is_checked():
    with pytest.raises(ValueError, match="demos"):
        ICLConfig(demos=(0, 2))
