"""Per-token diffusion head (LatentLM §2.2, MAR's diffusion loss).

A small MLP with adaptive layer norm predicts the noise (or velocity) of one latent vector, given
the noisy vector, the diffusion timestep and the backbone's hidden state at the position before it.
Noising and sampling use diffusers' schedulers: DDPM (cosine betas) for training, DPM-Solver++ for
sampling. Several noise draws per token (`batch_mul`) make each backbone pass count more.

Sampling many latents in a row (`LatentSampler`): one picture is 64 latents x 20 solver steps of a
tiny MLP on [2, 256] rows, so per-call overhead, not arithmetic, sets its speed. The sampler keeps
what does not change from one latent to the next (the diffusers scheduler and its schedule, the
timestep embeddings), embeds each latent's condition once, makes the AdaLN modulations of all of a
latent's steps together (`SplitDenoiser`), and runs in inference mode. Callers run it with one
intra-op thread at small batch (`tiny_op_threads`): threads spinning on ops this small cost far
more than they give, worst beside other busy processes. Where it can (fp32 on the CPU, the C++
extension built; `FUSED_SAMPLING`), it runs each latent's whole loop in one C++ call (`FusedLatentLoop`,
`latentlm.kernels.adaln_head`, with the solver read off diffusers' scheduler as an affine recurrence):
within fp32 rounding of the straightforward loop, `DiffusionHead.sample_reference`. Otherwise it runs
the MLP op by op and the scheduler's own `step`: the same numbers as that loop, bit for bit.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from pydantic import BaseModel, Field
from torch import Tensor, nn

from latentlm.kernels import dispatch
from latentlm.kernels.adaln_head import HeadWeights, cpu as adaln_head_cpu
from latentlm.solver_recurrence import solver_coefficients


class DiffusionHeadConfig(BaseModel):
    width: int = Field(256, ge=8)
    depth: int = Field(3, ge=1)  # AdaLN residual blocks
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    batch_mul: int = Field(4, ge=1)  # noise draws per token in training


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DenoiserMLP(nn.Module):
    """(x_t [N, D], t [N], c [N, C]) -> prediction [N, D]."""

    def __init__(self, latent_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.x_in = nn.Linear(latent_dim, width)
        self.t_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embed = TimestepEmbedding(width, width)
        self.c_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, latent_dim)
        for layer in (self.out_modulation[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        y = self.t_embed(self.t_proj(t).to(x.dtype)) + self.c_embed(c)  # [N, W]
        h = self.x_in(x)  # [N, W]
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.out_modulation(y).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def time_embedding(self, t: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The embedding of timestep `t` (0-dim) for `n` rows: [n, W], as `forward` makes it."""
        return self.t_embed(self.t_proj(t.expand(n)).to(dtype))


# How `SplitDenoiser` makes the AdaLN modulations of a latent's steps (read when a sampler is made).
# True: one [N, W] linear per step and layer, as `forward` does: the same numbers, bit for bit.
# False: one [steps x N, W] linear per layer: about 8% less time per picture, but a matrix product of
# another shape may sum in another order: the modulations move in the last bit, and 64 latents fed back
# through the backbone carry that on (shapes-tiny, latents vs the exact path: relative RMS 1e-6 for
# one picture at the defaults, 2e-4 for 3 pictures at CFG 3, temperature 1, 7 steps).
EXACT_MODULATIONS = True


class SplitDenoiser:
    """`DenoiserMLP.forward` cut at the AdaLN modulations, for sampling: the modulations of all the steps
    of one latent are made together (one layer at a time, its weight staying in cache), then each step
    runs the MLP alone. The parameters are held as plain tensors (looking them up through nn.Module
    attributes costs more than a [2, 256] op). Every piece runs the very ops of `forward`, on tensors
    of the same shapes, so the results are the same bit for bit (element-wise ops that `forward` runs
    on [N, W] tensors are not run on stacked ones: SiLU's vector tail would round differently), unless
    `exact` is False (see `EXACT_MODULATIONS`)."""

    def __init__(self, net: DenoiserMLP, exact: bool | None = None) -> None:
        self.exact = EXACT_MODULATIONS if exact is None else exact
        self.width = net.x_in.out_features
        self.x_in = (net.x_in.weight, net.x_in.bias)
        self.mlps = [(b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight, b.mlp[2].bias, b.norm.eps) for b in net.blocks]
        self.mods = [(m[1].weight, m[1].bias) for m in [*(b.modulation for b in net.blocks), net.out_modulation]]
        self.out = (net.out.weight, net.out.bias, net.out_norm.eps)

    def modulations(self, t_embs: list[Tensor], c_emb: Tensor) -> list[list[tuple[Tensor, ...]]]:
        """y = t_emb + c_emb [N, W] per step -> per step: (shift, 1 + scale, gate) per block, then
        (shift, 1 + scale) for the output layer."""
        if self.exact:
            acts = [F.silu(t_emb + c_emb) for t_emb in t_embs]  # SiLU(y): the start of every modulation
            outs = [torch.stack([F.linear(a, weight, bias) for a in acts]) for weight, bias in self.mods]
        else:
            acts = F.silu(torch.stack(t_embs) + c_emb)  # [S, N, W]
            outs = [F.linear(acts.flatten(0, 1), weight, bias).unflatten(0, acts.shape[:2])
                    for weight, bias in self.mods]
        per_layer = []
        for out in outs:  # [S, N, 3W or 2W]
            shift, scale, *gate = out.chunk(out.shape[-1] // self.width, dim=-1)  # each [S, N, W]
            per_layer.append([shift.unbind(0), (1 + scale).unbind(0), *(g.unbind(0) for g in gate)])
        return [[tuple(part[i] for part in layer) for layer in per_layer] for i in range(len(t_embs))]

    def __call__(self, x: Tensor, mods: list[tuple[Tensor, ...]]) -> Tensor:
        """x_t [N, D] and one step's modulations -> the prediction [N, D] of `forward`."""
        width = (self.width,)
        h = F.linear(x, *self.x_in)  # [N, W]
        for (up_w, up_b, down_w, down_b, eps), (shift, scale1, gate) in zip(self.mlps, mods):
            a = F.layer_norm(h, width, eps=eps) * scale1 + shift
            h = h + gate * F.linear(F.silu(F.linear(a, up_w, up_b)), down_w, down_b)
        out_w, out_b, eps = self.out
        shift, scale1 = mods[-1]
        return F.linear(F.layer_norm(h, width, eps=eps) * scale1 + shift, out_w, out_b)


# Whether `LatentSampler` runs each latent's whole loop in one C++ call (`FusedLatentLoop`) where it can
# (read when a sampler is made; its `fused` argument overrides it): 20 steps of [2, 256] rows, depth 3, in
# ~1.4 ms instead of ~6 ms step by step (one thread, Xeon with AVX-512). The fused loop is not bit-identical
# to `sample_reference`: its modulations come from another matrix product and the kernel sums in its own
# order, so latents differ in the last bits (relative RMS ~1e-6 per latent; pictures, whose 64 latents are
# fed back through the backbone, more: tests/test_generation_speed_paths.py). False: the torch path.
FUSED_SAMPLING = True


def head_weights(net: DenoiserMLP) -> HeadWeights:
    """The MLP's weights as the fused kernel takes them (the blocks' stacked: [L, ...]), detached."""
    ups, downs = [b.mlp[0] for b in net.blocks], [b.mlp[2] for b in net.blocks]
    with torch.no_grad():
        stacked = [torch.stack([getattr(layer, name) for layer in layers])
                   for layers in (ups, downs) for name in ("weight", "bias")]  # up w, up b, down w, down b
    up_w, up_b, down_w, down_b = stacked
    eps = (*(b.norm.eps for b in net.blocks), net.out_norm.eps)
    return HeadWeights(net.x_in.weight.detach(), net.x_in.bias.detach(), up_w, up_b, down_w, down_b,
                       net.out.weight.detach(), net.out.bias.detach(), eps)


class FusedLatentLoop:
    """One latent's whole sampling loop in one C++ call (`latentlm.kernels.adaln_head`).

    Per latent: the condition's embedding, then the AdaLN modulations of all steps in one matrix product
    (every modulation layer's weights side by side: [(3L + 2) W, W]), then the kernel runs the MLP, the
    guidance mix and the solver step after step. The solver is the scheduler's own DPM-Solver++ read off
    as per-step coefficients of an affine recurrence (`latentlm.solver_recurrence`)."""

    def __init__(self, net: DenoiserMLP, scheduler: DPMSolverMultistepScheduler, t_embs: list[Tensor], guided: bool,
                 cfg_scale: float) -> None:
        layers = [*(b.modulation[1] for b in net.blocks), net.out_modulation[1]]
        self.mod_w = torch.cat([layer.weight.detach() for layer in layers])  # [(3L + 2) W, W]
        self.mod_b = torch.cat([layer.bias.detach() for layer in layers])  # [(3L + 2) W]
        self.c_embed = (net.c_embed.weight.detach(), net.c_embed.bias.detach())
        self.t_emb = torch.stack(t_embs)  # [S, N, W]
        self.weights = head_weights(net)
        self.coefs = solver_coefficients(scheduler, len(t_embs))  # [S, 5]
        self.guided, self.cfg_scale = guided, cfg_scale

    @staticmethod
    def runs(net: DenoiserMLP, rows: int, device: torch.device) -> bool:
        """Whether the kernel takes this work: fp32 on the CPU, the extension built (and not forced off by
        LATENTLM_KERNELS=reference), at most its MAX_ROWS MLP rows."""
        return (torch.get_default_dtype() == torch.float32 and rows <= adaln_head_cpu.MAX_ROWS
                and all(p.dtype == torch.float32 for p in net.parameters())
                and dispatch.choose("adaln_head_sample", device).name == "cpp")

    def modulations(self, c: Tensor) -> Tensor:
        """The conditions c [N, C] -> every step's modulations [S, N, (3L + 2) W]."""
        acts = F.silu(self.t_emb + F.linear(c, *self.c_embed))  # [S, N, W]
        return F.linear(acts, self.mod_w, self.mod_b)

    def __call__(self, x: Tensor, c: Tensor) -> Tensor:
        """x [R, D] (the scaled starting noise), c [N, C] -> the sampled latent [R, D]."""
        mods = self.modulations(c)
        return adaln_head_cpu.adaln_head_sample_cpp(x, mods, self.coefs, self.weights, self.cfg_scale, self.guided)


class DiffusionHead(nn.Module):
    def __init__(self, latent_dim: int, cond_dim: int, config: DiffusionHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionHeadConfig()
        c = self.config
        self.net = DenoiserMLP(latent_dim, cond_dim, c.width, c.depth)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule, prediction_type=c.prediction_type
        )

    @property
    def latent_dim(self) -> int:
        return self.net.out.out_features

    def loss(self, target: Tensor, cond: Tensor, generator: torch.Generator | None = None,
             noise: tuple[Tensor, Tensor] | None = None, reduction: str = "mean") -> Tensor:
        """Denoising loss of clean latents `target` [N, D] given conditions `cond` [N, C], each repeated
        `batch_mul` times with its own noise and timestep; `noise` = (noise [m*N, D], timesteps [m*N])
        gives them instead of drawing them from `generator`."""
        m = self.config.batch_mul
        x0 = target.repeat(m, 1)  # [m*N, D]
        c = cond.repeat(m, 1)  # [m*N, C]
        if noise is None:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                              device=x0.device)
        else:
            eps, t = noise[0].to(x0.dtype), noise[1]
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        goal = eps if self.config.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, eps, t)
        return F.mse_loss(self.net(x_t, t, c), goal, reduction=reduction)

    def sampler(self, scheduler_class: type[DPMSolverMultistepScheduler] = DPMSolverMultistepScheduler,
                ) -> DPMSolverMultistepScheduler:
        """A fresh DPM-Solver++ sampler matching the training noise schedule (samplers keep state)."""
        c = self.config
        return scheduler_class(
            num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
            prediction_type=c.prediction_type, algorithm_type="dpmsolver++", lambda_min_clipped=-5.1,
        )

    def latent_sampler(
        self, rows: int, guided: bool, cfg_scale: float = 1.0, steps: int = 20, temperature: float = 1.0,
        device: torch.device | str | None = None, fused: bool | None = None,
    ) -> "LatentSampler":
        """A sampler for many latents in a row with the same settings (`rows` conditions each, 2 x rows guided);
        `fused`: see `LatentSampler`."""
        return LatentSampler(self, rows, guided, cfg_scale, steps, temperature, device, fused)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        uncond: Tensor | None = None,
        cfg_scale: float = 1.0,
        steps: int = 20,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Draw one latent per condition row: cond [N, C] -> [N, D].

        `temperature` scales the starting noise (as MAR's temperature does): below 1 the deterministic
        DPM-Solver++ trajectory starts nearer the mode, trading diversity for fidelity.

        With `uncond` and cfg_scale != 1, the conditional and unconditional predictions are made in
        one batched call and mixed as uncond + s * (cond - uncond). For many latents in a row, make one
        `latent_sampler` and call it per latent; this is `sample_reference`, bit for bit with
        `FUSED_SAMPLING` off, within fp32 rounding with it on.
        """
        guided = uncond is not None and cfg_scale != 1.0
        c = torch.cat([cond, uncond]) if guided else cond  # [2N or N, C]
        sampler = self.latent_sampler(cond.shape[0], guided, cfg_scale, steps, temperature, cond.device)
        with tiny_op_threads(c.shape[0]):
            return sampler(c, generator)

    @torch.no_grad()
    def sample_reference(
        self,
        cond: Tensor,
        uncond: Tensor | None = None,
        cfg_scale: float = 1.0,
        steps: int = 20,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        clock: "PhaseClock | None" = None,
    ) -> Tensor:
        """`sample` as the straightforward loop (a new scheduler, the whole MLP every step), kept as the
        reference the fast path is tested and benchmarked against. `clock` times its "head"/"solver" parts."""
        clock = clock or NO_CLOCK
        latent_dim = self.net.out.out_features
        sched = self.sampler()
        sched.set_timesteps(steps, device=cond.device)
        x = torch.randn(cond.shape[0], latent_dim, generator=generator, device=cond.device)
        x = x * sched.init_noise_sigma * temperature  # [N, D]
        guided = uncond is not None and cfg_scale != 1.0
        c = torch.cat([cond, uncond]) if guided else cond  # [2N or N, C]
        clock.lap("solver")
        for t in sched.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            out = self.net(x_in, t.expand(x_in.shape[0]), c)
            if guided:
                out_c, out_u = out.chunk(2)
                out = out_u + cfg_scale * (out_c - out_u)
            clock.lap("head")
            x = sched.step(out, t, x).prev_sample
            clock.lap("solver")
        return x


# ---- fast sampling ----------------------------------------------------------------------------------
TINY_OP_ROWS = 64  # up to this many rows (2 x batch with guidance) sampling runs on one thread


@contextmanager
def tiny_op_threads(rows: int, limit: int | None = None) -> Iterator[None]:
    """Run the block with one intra-op thread when its tensors have at most `limit` rows (default
    `TINY_OP_ROWS`), then restore the previous setting.

    At these sizes (a [2, 256] linear is a few microseconds) a second thread only adds its wake-up and
    spin-wait, and beside other busy processes the threads wait on each other for whole time slices.
    The thread count is process-wide: other Python threads using torch meanwhile get one thread too.
    """
    previous = torch.get_num_threads()
    if rows > (TINY_OP_ROWS if limit is None else limit) or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class PhaseClock:
    """Wall time per phase: `lap(phase)` books the time since the previous lap to `phase`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


class _NoClock(PhaseClock):
    def __init__(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass


NO_CLOCK = _NoClock()


class _ReusedDPMSolver(DPMSolverMultistepScheduler):
    """diffusers' DPM-Solver++, unchanged, except that the (alpha_t, sigma_t) of each schedule sigma is
    computed once (by diffusers' own `_sigma_to_alpha_sigma_t`) and reused: a step asks for it three or
    four times, on 0-dim tensors, which was half of the solver's time. Same values, so the same results."""

    def _sigma_to_alpha_sigma_t(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        memo = self.__dict__.setdefault("_alpha_sigma_memo", {})
        key = (sigma.item(), sigma.dtype, sigma.device)
        if key not in memo:
            memo[key] = super()._sigma_to_alpha_sigma_t(sigma)
        return memo[key]


class LatentSampler:
    """DPM-Solver++ sampling of one latent per condition row, made for many latents in a row.

    Made once per batch of pictures: the diffusers scheduler with its `set_timesteps` schedule (rewound
    between latents rather than rebuilt; `_ReusedDPMSolver`) and the timestep embeddings of every step.
    Per latent the condition is embedded once and the AdaLN modulations of all its steps are made
    together (they depend on t_emb + c_emb). Then, fused (`fused`, default `FUSED_SAMPLING`, where
    `FusedLatentLoop.runs`): the whole loop in one C++ call, within fp32 rounding of
    `DiffusionHead.sample_reference`. Else per step the MLP op by op and the scheduler's own `step`: the
    same results as `sample_reference` (see `EXACT_MODULATIONS`).
    """

    def __init__(
        self, head: DiffusionHead, rows: int, guided: bool, cfg_scale: float = 1.0, steps: int = 20,
        temperature: float = 1.0, device: torch.device | str | None = None, fused: bool | None = None,
    ) -> None:
        self.net, self.rows, self.guided = head.net, rows, guided
        self.denoiser = SplitDenoiser(head.net)
        self.cfg_scale, self.temperature = cfg_scale, temperature
        dtype = torch.get_default_dtype()  # the dtype of the starting noise, which `forward` casts t_proj to
        self.scheduler = head.sampler(_ReusedDPMSolver)
        self.scheduler.set_timesteps(steps, device=device)
        self.device = self.scheduler.timesteps.device
        self.timesteps = list(self.scheduler.timesteps)  # 0-dim tensors, as iterating the schedule gives
        # the first step's index, looked up once (as `step` would for every latent) rather than per latent
        self.scheduler.set_begin_index(self.scheduler.index_for_timestep(self.timesteps[0]))
        n = 2 * rows if guided else rows
        with torch.inference_mode():
            self.t_emb = [self.net.time_embedding(t, n, dtype) for t in self.timesteps]  # [n, W] per step
            use_fused = FUSED_SAMPLING if fused is None else fused
            self.fused = (FusedLatentLoop(self.net, self.scheduler, self.t_emb, guided, cfg_scale)
                          if use_fused and FusedLatentLoop.runs(self.net, n, self.device) else None)

    def _rewind(self) -> None:
        """Back to the first step, keeping the schedule: the state that `set_timesteps` itself resets."""
        s = self.scheduler
        s.model_outputs = [None] * s.config.solver_order
        s.lower_order_nums = 0
        s._step_index = None

    def __call__(self, c: Tensor, generator: torch.Generator | None = None, clock: PhaseClock | None = None) -> Tensor:
        """c: the conditions [rows, C], guided: [cond; uncond] rows [2 rows, C] -> one latent per row [rows, D].

        Runs in inference mode (less bookkeeping per op than no_grad, same kernels); what it returns is an
        ordinary tensor when called outside inference mode."""
        clock = clock or NO_CLOCK
        with torch.inference_mode():
            x = torch.randn(self.rows, self.net.out.out_features, generator=generator, device=self.device)
            x = x * self.scheduler.init_noise_sigma * self.temperature  # [rows, D]
            clock.lap("solver")
            if self.fused is not None:  # the MLP and the solver of every step in one call
                x = self.fused(x, c)
                clock.lap("head")
            else:
                x = self._step_by_step(x, c, clock)
        return x.clone() if not torch.is_inference_mode_enabled() else x

    def _step_by_step(self, x: Tensor, c: Tensor, clock: PhaseClock) -> Tensor:
        """The loop from Python: per step the MLP op by op, then the scheduler's `step`. x [rows, D] -> [rows, D]."""
        sched, denoiser = self.scheduler, self.denoiser
        self._rewind()
        c_emb = self.net.c_embed(c.contiguous())  # [n, W], once per latent
        for t, mods in zip(self.timesteps, denoiser.modulations(self.t_emb, c_emb)):
            out = denoiser(torch.cat([x, x]) if self.guided else x, mods)
            if self.guided:
                out_c, out_u = out.chunk(2)
                out = out_u + self.cfg_scale * (out_c - out_u)
            clock.lap("head")
            x = sched.step(out, t, x, return_dict=False)[0]
            clock.lap("solver")
        return x
