"""train.ema_decay: the exported weights are the moving average, and a resumed run continues it exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from latentlm.errors import CheckpointError
from latentlm.model import LatentLM
from latentlm.training.ema import EMA
from latentlm.training.lm import train_lm


def test_the_average_follows_its_formula_and_swaps_in_and_out():
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    expected = 0.9 * start + 0.1 * (start + 1.0)
    assert torch.allclose(ema.shadow[ema.names.index("weight")], expected)
    live = model.weight.detach().clone()
    with ema.applied(model) as averaged:
        assert torch.allclose(averaged.weight, expected)
    assert torch.equal(model.weight, live)
    with pytest.raises(CheckpointError, match="other parameters"):
        ema.load_state_dict(EMA(nn.Linear(3, 3, bias=False), 0.9).state_dict())
    with pytest.raises(ValueError, match="between 0 and 1"):
        EMA(model, 1.0)


def test_a_run_exports_the_average_and_resumes_it(tmp_path, tiny_t2i_config):
    config = tiny_t2i_config("ema", "steps: 4, ema_decay: 0.5")
    whole = train_lm(config, tmp_path / "whole", progress=False)
    train_lm(config, tmp_path / "split", progress=False, stop_after=2)
    split = train_lm(config, tmp_path / "split", resume=True, progress=False)
    a, b = LatentLM.from_pretrained(whole).state_dict(), LatentLM.from_pretrained(split).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed average is the uninterrupted one
    from safetensors.torch import load_file

    last = load_file(tmp_path / "whole" / "checkpoints" / "step_0000004" / "model.safetensors")  # the last step's
    changed = [k for k in a if k.startswith("diffusion.") and k in last and not torch.equal(last[k], a[k])]
    assert changed  # the export is the average, not the last step's weights
    assert (tmp_path / "whole" / "checkpoints" / "step_0000004" / "custom_checkpoint_0.pkl").is_file()


def test_export_to_writes_the_newest_checkpoint_average_and_leaves_the_run_alone(tmp_path, tiny_t2i_config):
    config = tiny_t2i_config("ema_probe", "steps: 4, ema_decay: 0.5")
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="--export-to: no checkpoint"):
        train_lm(config, run, progress=False, export_to=tmp_path / "early")
    train_lm(config, run, progress=False, stop_after=2)  # a run mid-way: checkpoint at step 2, no final/
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    probe = train_lm(config, run, progress=False, export_to=tmp_path / "probe")
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    from safetensors.torch import load_file

    ema = torch.load(run / "checkpoints" / "step_0000002" / "custom_checkpoint_0.pkl", weights_only=False)
    exported = LatentLM.from_pretrained(probe).state_dict()
    for name, shadow in zip(ema["names"], ema["shadow"]):
        assert torch.equal(exported[name], shadow)  # the average at step 2, not the raw weights
    raw = load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")
    assert any(not torch.equal(raw[k], exported[k]) for k in raw if k in exported)
