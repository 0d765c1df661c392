"""Training from scratch, exact resume, save/load identity and seeded determinism."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_lm_config
from latentlm.errors import CheckpointError, ConfigError
from latentlm.generation import generate_images
from latentlm.training.lm import train_lm
from latentlm.model import LatentLM


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_thirty_steps_from_scratch_lower_the_loss(tiny_run):
    losses = _losses(tiny_run)
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert (tiny_run / "final" / "model.safetensors").is_file()


def test_resume_continues_exactly(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=20)
    straight = train_lm(config, tmp_path / "straight", progress=False)
    stopped = train_lm(config, tmp_path / "resumed", stop_after=10, progress=False)
    assert stopped.name == "step_0000010" and not (tmp_path / "resumed" / "final").exists()
    resumed = train_lm(config, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_existing_run_needs_resume_flag(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=4)
    train_lm(config, tmp_path / "run", stop_after=2, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train_lm(config, tmp_path / "run", progress=False)


def test_save_load_identity(tiny_model_dir, tmp_path):
    model = LatentLM.from_pretrained(tiny_model_dir)
    copy_dir = model.save_pretrained(tmp_path / "copy")
    for name in ("config.json", "model.safetensors", "tokenizer.model", "image_codec/config.json",
                 "image_codec/model.safetensors"):
        assert (copy_dir / name).is_file(), name
    copy = LatentLM.from_pretrained(copy_dir)
    a = generate_images(model, ["a red circle"], steps=4, cfg_scale=2.0, seed=3)[0]
    b = generate_images(copy, ["a red circle"], steps=4, cfg_scale=2.0, seed=3)[0]
    assert a.tobytes() == b.tobytes()
    sa, sb = model.state_dict(), copy.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_generation_is_deterministic(tiny_model_dir):
    model = LatentLM.from_pretrained(tiny_model_dir)
    prompts = ["a small blue square", "a red circle above a green triangle"]
    a = generate_images(model, prompts, steps=4, seed=11)
    b = generate_images(model, prompts, steps=4, seed=11)
    c = generate_images(model, prompts, steps=4, seed=12)
    assert [i.tobytes() for i in a] == [i.tobytes() for i in b]
    assert [i.tobytes() for i in a] != [i.tobytes() for i in c]
    assert all(i.size == (64, 64) and i.mode == "RGB" for i in a)


def test_batch_is_a_pure_function_of_step(tiny_lm_config, tmp_path):
    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LMTrainConfig, LatentLMTask

    task = LatentLMTask(load_yaml_config(tiny_lm_config, LMTrainConfig), tmp_path)
    a, b, c = task.batch(5, 4), task.batch(5, 4), task.batch(6, 4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    # each row: <s> caption <image> 64 latents </image> </s>, left-padded
    tok = task.tokenizer
    for row in range(4):
        ids, is_lat = a.ids[row][a.valid[row]], a.is_latent[row][a.valid[row]]
        assert is_lat.sum() == 64 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        first = int(is_lat.nonzero()[0])
        assert ids[first - 1] == tok.token_id("<image>") and ids[first + 64] == tok.token_id("</image>")


def test_batches_of_another_seed_differ(tiny_lm_config, tmp_path):
    """A second stage (train.seed: 1) sees other scenes and noise at the same step than the first."""
    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LMTrainConfig, LatentLMTask

    config = load_yaml_config(tiny_lm_config, LMTrainConfig)
    first = LatentLMTask(config, tmp_path).batch(3, 4)
    config.train.seed = 1
    second = LatentLMTask(config, tmp_path).batch(3, 4)
    assert not torch.equal(first.latents, second.latents)


def test_init_from_starts_a_second_stage_from_saved_weights(tiny_lm_config, tiny_model_dir, tmp_path):
    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LMTrainConfig, LatentLMTask

    config = load_yaml_config(tiny_lm_config, LMTrainConfig)
    config.init_from = str(tiny_model_dir)
    task = LatentLMTask(config, tmp_path)
    saved = LatentLM.from_pretrained(tiny_model_dir).state_dict()
    for name, value in task.model.state_dict().items():
        assert torch.equal(value, saved[name]), name

    config.backbone = config.backbone.model_copy(update={"d_model": 32})
    with pytest.raises(ConfigError, match="init_from: .* backbone differ"):
        LatentLMTask(config, tmp_path)
    config.init_from = "shapes-tiny"  # a shipped model by name: found, and its architecture checked
    with pytest.raises(ConfigError, match=r"init_from: .*pretrained/shapes-tiny holds a model whose"):
        LatentLMTask(config, tmp_path)
    config.init_from = str(tmp_path / "no-such-run")
    with pytest.raises(CheckpointError, match="no such folder"):
        LatentLMTask(config, tmp_path)
