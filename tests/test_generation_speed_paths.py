"""The fast sampling paths (`LatentSampler`, one thread at small batch) against the straightforward loop:

- step by step (`FUSED_SAMPLING` off, the `step_by_step` fixture): its numbers bit for bit, for the
  diffusion head alone, whole pictures' latents, and the decoded pictures;
- fused (each latent's loop in one C++ call, `FusedLatentLoop`): within fp32 rounding for single latents,
  within what 64 latents fed back through the backbone make of it for pictures; deterministic.

Both paths run in one thread here (the fast one does so itself at small batch): ops this small gain
nothing from a second thread, and on a loaded machine two threads make these tests minutes long."""
from contextlib import contextmanager

import pytest
import torch

from tolerance import U_FP32
from latentlm import diffusion_head, generation
from latentlm.backbones import BackboneConfig
from latentlm.codecs import ImageSigmaVAE, SigmaVAEConfig
from latentlm.diffusion_head import DiffusionHead, DiffusionHeadConfig, FusedLatentLoop, PhaseClock, tiny_op_threads
from latentlm.kernels.adaln_head import cpu as adaln_head_cpu
from latentlm.generation import generate_images, sample_image_latents, sample_image_latents_reference
from latentlm.images import to_pil
from latentlm.model import LatentLM
from latentlm.model_config import ModelConfig
from latentlm.tokenizer import TextTokenizer


@contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture
def step_by_step(monkeypatch):
    """The torch fast path (MLP op by op, diffusers' `step`), the one that is bit-exact with the reference."""
    monkeypatch.setattr(diffusion_head, "FUSED_SAMPLING", False)


@pytest.fixture
def fused(monkeypatch):
    """The fused path: skipped where the C++ kernel cannot be built."""
    if not adaln_head_cpu.available("cpu"):
        pytest.skip("the C++ diffusion-head kernel could not be built here")
    monkeypatch.setattr(diffusion_head, "FUSED_SAMPLING", True)


def _random_head(latent_dim=4, cond_dim=8, width=32, depth=2, prediction_type="v_prediction"):
    torch.manual_seed(0)
    head = DiffusionHead(latent_dim, cond_dim, DiffusionHeadConfig(width=width, depth=depth,
                                                                   prediction_type=prediction_type))
    for p in head.parameters():  # leave the zero init, so that every layer matters
        torch.nn.init.normal_(p, std=0.2)
    return head


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
def test_head_sample_matches_reference(step_by_step, steps, guided, rows):
    head = _random_head()
    cond, uncond = torch.randn(rows, 8), torch.randn(rows, 8)
    kw = dict(cfg_scale=2.5 if guided else 1.0, steps=steps, temperature=0.85)
    fast = head.sample(cond, uncond if guided else None, generator=torch.Generator().manual_seed(5), **kw)
    ref = head.sample_reference(cond, uncond if guided else None, generator=torch.Generator().manual_seed(5), **kw)
    assert fast.shape == (rows, 4) and torch.isfinite(fast).all()
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_latent_sampler_for_many_latents_matches_fresh_samplers(step_by_step, prediction_type):
    """The scheduler is rewound between latents, not rebuilt: each latent as if sampled alone."""
    head = _random_head(depth=3, prediction_type=prediction_type)
    sampler = head.latent_sampler(2, guided=True, cfg_scale=2.0, steps=7, temperature=0.9)
    g_fast, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(4):
        c = torch.randn(4, 8)
        fast = sampler(c, g_fast)
        ref = head.sample_reference(c[:2], c[2:], 2.0, 7, g_ref, 0.9)
        assert torch.equal(fast, ref)


def test_many_steps_match_reference(step_by_step):
    head = _random_head(width=16, depth=1)
    cond = torch.randn(2, 8)
    for steps in (50, 120):
        fast = head.sample(cond, steps=steps, generator=torch.Generator().manual_seed(2))
        ref = head.sample_reference(cond, steps=steps, generator=torch.Generator().manual_seed(2))
        assert torch.equal(fast, ref), steps


def _rel_rms(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def test_inexact_modulations_stay_close_to_reference(step_by_step, monkeypatch):
    """EXACT_MODULATIONS = False makes the modulations of all steps in one product: not bit-identical
    (at width 256 the product of another shape sums differently here), but within rounding (~6e-7)."""
    monkeypatch.setattr(diffusion_head, "EXACT_MODULATIONS", False)
    head = _random_head(width=256, depth=3)
    cond, uncond = torch.randn(3, 8), torch.randn(3, 8)
    fast = head.sample(cond, uncond, 2.0, 20, torch.Generator().manual_seed(4), 0.85)
    ref = head.sample_reference(cond, uncond, 2.0, 20, torch.Generator().manual_seed(4), 0.85)
    assert _rel_rms(fast, ref) < 1e-5


# One latent, fused vs the reference: the bound of tests/test_adaln_head.py's whole loop (two fp32 evaluations
# in other orders: measured <= 34 u for this comparison, widths 32 and 256); 7.5x the worst.
LATENT = 256 * U_FP32  # ~1.5e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
def test_fused_head_sample_is_close_to_reference(fused, rows, guided, steps, prediction_type):
    head = _random_head(prediction_type=prediction_type)
    cond, uncond = torch.randn(rows, 8), torch.randn(rows, 8)
    kw = dict(cfg_scale=2.5 if guided else 1.0, steps=steps, temperature=0.85)
    assert head.latent_sampler(rows, guided, kw["cfg_scale"], steps).fused is not None  # the kernel runs
    got = head.sample(cond, uncond if guided else None, generator=torch.Generator().manual_seed(5), **kw)
    ref = head.sample_reference(cond, uncond if guided else None, generator=torch.Generator().manual_seed(5), **kw)
    assert got.shape == (rows, 4) and torch.isfinite(got).all() and not got.is_inference()
    assert _rel_rms(got, ref) <= LATENT


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_fused_sampler_for_many_latents(fused, prediction_type):
    """Width 256, depth 3, latent dim 16 (the shipped head's shape): each latent as if sampled alone, and
    the same seed gives the same latents twice."""
    head = _random_head(latent_dim=16, width=256, depth=3, prediction_type=prediction_type)
    runs = []
    for _ in range(2):
        sampler = head.latent_sampler(2, guided=True, cfg_scale=3.0, steps=20, temperature=0.9)
        g_fast, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        torch.manual_seed(11)
        latents = []
        for _ in range(3):
            c = torch.randn(4, 8)
            latents.append(sampler(c, g_fast))
            assert _rel_rms(latents[-1], head.sample_reference(c[:2], c[2:], 3.0, 20, g_ref, 0.9)) <= LATENT
        runs.append(torch.stack(latents))
    assert torch.equal(runs[0], runs[1])


def test_the_step_by_step_path_where_the_kernel_does_not_run(fused, monkeypatch):
    """Not fp32, more rows than the kernel takes, or the references forced: the torch path, bit-exact."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a float64 head samples from float64 noise
    try:
        head = _random_head()
        cond = torch.randn(2, 8)
        assert head.latent_sampler(2, False, steps=3).fused is None
        got = head.sample(cond, steps=3, generator=torch.Generator().manual_seed(2))
        assert got.dtype == torch.float64
        assert torch.equal(got, head.sample_reference(cond, steps=3, generator=torch.Generator().manual_seed(2)))
    finally:
        torch.set_default_dtype(previous)
    head = _random_head()
    assert head.latent_sampler(adaln_head_cpu.MAX_ROWS // 2 + 1, True, 2.0, steps=3).fused is None
    assert head.latent_sampler(adaln_head_cpu.MAX_ROWS // 2, True, 2.0, steps=3).fused is not None
    assert head.latent_sampler(1, True, 2.0, steps=3, fused=False).fused is None
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert head.latent_sampler(1, True, 2.0, steps=3).fused is None
    cond, uncond = torch.randn(1, 8), torch.randn(1, 8)
    got = head.sample(cond, uncond, 2.0, 3, torch.Generator().manual_seed(2))
    assert torch.equal(got, head.sample_reference(cond, uncond, 2.0, 3, torch.Generator().manual_seed(2)))


def test_tiny_op_threads_is_one_thread_inside_and_restores():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with tiny_op_threads(2, limit=4):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with tiny_op_threads(5, limit=4):  # above the limit: left alone
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), tiny_op_threads(2, limit=4):
            raise RuntimeError("restored on errors too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


# ---- whole pictures on a tiny random LatentLM ---------------------------------------------------
@pytest.fixture(scope="module")
def random_lm(tiny_tokenizer_path):
    tok = TextTokenizer(tiny_tokenizer_path)
    torch.manual_seed(0)
    codec = ImageSigmaVAE(SigmaVAEConfig(latent_dim=8, block_out_channels=(16, 16, 16, 16), norm_num_groups=8))
    config = ModelConfig(vocab_size=tok.vocab_size, latent_dim=8, image_tokens=64,
                         backbone=BackboneConfig(d_model=32, n_layers=2, n_heads=4),
                         head=DiffusionHeadConfig(width=32, depth=2))
    model = LatentLM(config, tok, {"image": codec})
    for p in model.diffusion.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


@pytest.mark.parametrize("prompts,cfg", [(["a red circle"], 2.0), (["a red circle"], 1.0),
                                         (["a blue square", "a green triangle left of a red circle", "two"], 3.0)])
def test_picture_latents_match_reference(step_by_step, random_lm, prompts, cfg):
    """Batch 3 has prompts of different lengths (left padding) and, guided, 6 rows."""
    kw = dict(steps=3, cfg_scale=cfg, temperature=0.85)
    clock = PhaseClock()
    fast = sample_image_latents(random_lm, prompts, generator=torch.Generator().manual_seed(3), clock=clock, **kw)
    ref = sample_image_latents_reference(random_lm, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert fast.shape == (len(prompts), 64, 8) and torch.isfinite(fast).all()
    assert torch.equal(fast, ref)
    assert set(clock.seconds) >= {"backbone", "head", "solver"}


def test_inexact_modulations_keep_picture_latents_close(step_by_step, random_lm, monkeypatch):
    monkeypatch.setattr(diffusion_head, "EXACT_MODULATIONS", False)
    prompts = ["a blue square", "a green triangle left of a red circle"]
    fast = sample_image_latents(random_lm, prompts, 4, 2.0, torch.Generator().manual_seed(3))
    ref = sample_image_latents_reference(random_lm, prompts, 4, 2.0, torch.Generator().manual_seed(3))
    assert _rel_rms(fast, ref) < 1e-3  # 64 latents fed back through the backbone carry the last bits on


def test_generated_pictures_match_reference(step_by_step, random_lm):
    prompts = ["a red circle", "a yellow square above a blue circle"]
    clock = PhaseClock()
    fast = generate_images(random_lm, prompts, steps=2, cfg_scale=2.0, seed=7, clock=clock)
    assert "decode" in clock.seconds
    z = sample_image_latents_reference(random_lm, prompts, 2, 2.0, torch.Generator().manual_seed(7))
    codec = random_lm.codecs["image"]
    with torch.no_grad():
        ref = [to_pil(p) for p in codec.decode(codec.denormalize(z))]
    assert [i.tobytes() for i in fast] == [i.tobytes() for i in ref]


# A picture's latents, fused vs the reference. The backbone may amplify a latent's last-bit differences in
# the ones after it (the shipped model: up to 2e-4 for 3 pictures, see EXACT_MODULATIONS); this random one
# barely does: measured <= 4.2e-7 (7 u) over 3 seeds x 3 and 20 steps x the prompts below. The bound is 24x
# that; a wrong latent moves the rest by >= 1e-3.
PICTURE = 1e-5


@pytest.mark.parametrize("prompts,cfg", [(["a red circle"], 2.0), (["a red circle"], 1.0),
                                         (["a blue square", "a green triangle left of a red circle", "two"], 3.0)])
def test_fused_picture_latents_are_close_to_reference(fused, random_lm, prompts, cfg, monkeypatch):
    """Each latent is within fp32 rounding of the reference's and is fed back through the backbone, so the
    64 latents of a picture carry the last bits on (see PICTURE); one kernel call per latent; deterministic."""
    calls = []
    real = FusedLatentLoop.__call__
    monkeypatch.setattr(FusedLatentLoop, "__call__", lambda self, x, c: calls.append(1) or real(self, x, c))
    kw = dict(steps=3, cfg_scale=cfg, temperature=0.85)
    clock = PhaseClock()
    got = sample_image_latents(random_lm, prompts, generator=torch.Generator().manual_seed(3), clock=clock, **kw)
    assert len(calls) == 64  # one call per latent
    again = sample_image_latents(random_lm, prompts, generator=torch.Generator().manual_seed(3), **kw)
    ref = sample_image_latents_reference(random_lm, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert got.shape == (len(prompts), 64, 8) and torch.isfinite(got).all()
    assert torch.equal(got, again)  # deterministic
    assert _rel_rms(got, ref) <= PICTURE
    assert set(clock.seconds) >= {"backbone", "head"}


def test_one_thread_at_small_batch_only_and_the_setting_is_restored(random_lm, monkeypatch):
    seen = []

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):  # records the thread count sampling runs with, then stops the picture
        seen.append(torch.get_num_threads())
        raise Seen

    monkeypatch.setattr(random_lm.diffusion, "latent_sampler", spy)
    monkeypatch.setattr(generation, "ONE_THREAD_PICTURES", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(Seen):
            sample_image_latents(random_lm, ["a red circle"], steps=1)
        assert torch.get_num_threads() == 2
        with pytest.raises(Seen):
            sample_image_latents(random_lm, ["a red circle", "a blue square"], steps=1)
    finally:
        torch.set_num_threads(previous)
    assert seen == [1, 2]  # batch 1: one thread; batch 2 (above ONE_THREAD_PICTURES = 1): left at 2
