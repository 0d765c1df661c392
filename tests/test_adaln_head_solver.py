"""DPM-Solver++ as the affine recurrence the fused kernel runs: the coefficients read off diffusers'
scheduler reproduce its own `step` loop, for v- and epsilon-prediction and 1-20 steps; and the whole
reference loop (kernels/adaln_head/naive.py, with `FusedLatentLoop`'s modulations and weights) gives
what `DiffusionHead.sample_reference` (diffusers' scheduler, the modules step by step) gives."""

import itertools

import pytest
import torch

from tolerance import U_FP32, rel_rms
from latentlm.diffusion_head import DiffusionHead, DiffusionHeadConfig, FusedLatentLoop
from latentlm.kernels.adaln_head import adaln_head_sample_reference, solver_update
from latentlm.solver_recurrence import solver_coefficients

STEPS = [1, 2, 3, 5, 14, 20]
PREDICTIONS = ["v_prediction", "epsilon"]
# The recurrence against diffusers' loop: the same scalars (each coefficient is diffusers' own fp32 product,
# read with unit inputs) recombined in another order, a few roundings per step; the solver damps earlier
# ones. Measured <= 6.3 u (relative RMS 3.7e-7) over 8 seeds x the cases below; the bound is 5x that. A coefficient of
# the wrong step or a missed history term is off by >= 1e-3.
RECURRENCE = 32 * U_FP32  # ~1.9e-6
# The reference loop against `sample_reference`: the modulations from one product for all steps instead of
# one per step, the recurrence instead of `step`. Measured <= 34 u over 4 seeds x the cases below (and width
# 256 at weight std 0.05); the bound is 7.5x that (tests/test_adaln_head.py has the same reasoning).
LOOP = 256 * U_FP32  # ~1.5e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops (conftest)


def _head(prediction_type, latent_dim=4, width=32, depth=2, std=0.2):
    torch.manual_seed(0)
    head = DiffusionHead(latent_dim, 8, DiffusionHeadConfig(width=width, depth=depth, prediction_type=prediction_type))
    for p in head.parameters():  # leave the zero init, so that every layer matters
        torch.nn.init.normal_(p, std=std)
    return head


def _model(x, i):
    """A stand-in for the network at step i: nonlinear in x, [N, D] -> [N, D]."""
    g = torch.Generator().manual_seed(i)
    mix = torch.randn(x.shape[1], x.shape[1], generator=g) * 0.5
    return torch.tanh(x @ mix) + 0.3 * torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_the_recurrence_reproduces_the_schedulers_loop(prediction_type, steps):
    head = _head(prediction_type)
    coefs = solver_coefficients(head.sampler(), steps)
    assert coefs.shape == (steps, 5) and coefs.dtype == torch.float32
    for seed in range(3):
        sched = head.sampler()
        sched.set_timesteps(steps)
        x = ours = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
        m = torch.zeros_like(x)
        for i, t in enumerate(sched.timesteps):
            x = sched.step(_model(x, i), t, x).prev_sample
            ours, m = solver_update(coefs[i].tolist(), ours, _model(ours, i), m)
        assert rel_rms(ours, x) <= RECURRENCE, seed


def test_coefficients_are_cached_and_leave_the_scheduler_alone():
    sched = _head("v_prediction").sampler()
    sched.set_timesteps(7)
    before = sched.timesteps.clone()
    a, b = solver_coefficients(sched, 7), solver_coefficients(sched, 7)
    assert torch.equal(a, b) and a is not b  # copies of one cached table
    assert torch.equal(sched.timesteps, before) and sched.step_index is None
    assert not torch.equal(solver_coefficients(sched, 5), a[:5])  # another schedule
    assert a[0, 4] == 0 and a[-1, 4] == 0  # first order at the start and (lower_order_final) the end


def test_only_the_affine_solvers_are_taken():
    sched = _head("v_prediction").sampler()
    sde = type(sched).from_config({**sched.config, "algorithm_type": "sde-dpmsolver++"})
    with pytest.raises(ValueError, match="affine recurrence"):
        solver_coefficients(sde, 5)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_the_reference_loop_matches_sample_reference(prediction_type, steps):
    shapes = [(4, 32, 2), (16, 256, 3)]  # (latent dim, width, depth)
    for (d, w, depth), rows, guided, seed in itertools.product(shapes, (1, 3), (True, False), (0, 1)):
        head = _head(prediction_type, d, w, depth)
        g = torch.Generator().manual_seed(100 + seed)
        cond, uncond = torch.randn(rows, 8, generator=g), torch.randn(rows, 8, generator=g)
        cfg = 2.5 if guided else 1.0
        want = head.sample_reference(cond, uncond if guided else None, cfg, steps,
                                     torch.Generator().manual_seed(seed), 0.9)
        with torch.inference_mode():
            sampler = head.latent_sampler(rows, guided, cfg, steps, 0.9, fused=False)
            loop = FusedLatentLoop(head.net, sampler.scheduler, sampler.t_emb, guided, cfg)
            x = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)) * 0.9  # the reference's noise
            c = torch.cat([cond, uncond]) if guided else cond
            got = adaln_head_sample_reference(x, loop.modulations(c), loop.coefs, loop.weights, cfg, guided)
        assert rel_rms(got, want) <= LOOP, (d, w, depth, rows, guided, seed)
