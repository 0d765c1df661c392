"""The diffusion head's sampling loop of one latent: S steps of the AdaLN MLP (classifier-free guidance
mixed in) and of DPM-Solver++ as an affine recurrence, x [R, D] -> the sampled latent [R, D].

- `adaln_head_sample_reference` (naive.py): pure PyTorch, the oracle (and fallback);
- `adaln_head_sample_cpp` (cpu.py): the whole loop in one C++ call for CPU, fp32, a few rows.

Inputs: x [R, D], mods [S, N, (3L + 2) W] (N = 2R guided, else R), coefs [S, 5], `HeadWeights`, cfg_scale,
guided. Registered as op "adaln_head_sample": "reference" everywhere, "cpp" on CPU (priority 10) where
the extension builds.
"""
from .. import dispatch
from .cpu import adaln_head_sample_cpp, available
from .naive import HeadWeights, adaln_head_sample_reference, denoise, solver_update

dispatch.register("adaln_head_sample", "reference", adaln_head_sample_reference)
dispatch.register("adaln_head_sample", "cpp", adaln_head_sample_cpp, available=available, priority=10)

__all__ = ["HeadWeights", "adaln_head_sample_cpp", "adaln_head_sample_reference", "denoise", "solver_update"]
