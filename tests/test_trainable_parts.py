"""`trainable:` trains some parts of a LatentLM and freezes the rest: a head-only stage leaves every other
weight exactly as it was."""
from __future__ import annotations

import pytest
import torch

from latentlm.config_io import load_yaml_config
from latentlm.errors import ConfigError
from latentlm.model import LatentLM
from latentlm.training.lm import LMTrainConfig, train_lm


def test_only_the_named_parts_change(tmp_path, tiny_t2i_config):
    base = train_lm(tiny_t2i_config("base", "steps: 2"), tmp_path / "base", progress=False)
    config = tiny_t2i_config("head-only", "steps: 2", f"init_from: {base}\ntrainable: [diffusion.]")
    tuned = train_lm(config, tmp_path / "tuned", progress=False)
    before, after = LatentLM.from_pretrained(base).state_dict(), LatentLM.from_pretrained(tuned).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("diffusion.") for k in changed)


def test_a_prefix_that_names_nothing_is_a_config_error(tmp_path, tiny_t2i_config):
    config = load_yaml_config(tiny_t2i_config("typo", "steps: 2", "trainable: [difusion.]"), LMTrainConfig)
    from latentlm.training.lm import LatentLMTask

    with pytest.raises(ConfigError, match=r"trainable: \['difusion.'\] name no trainable parameter"):
        LatentLMTask(config, tmp_path)
