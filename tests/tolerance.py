"""The error measure and the bounds shared by the kernel tests (fp32 kernels; BitLinear's int8 flips).

The measure is fla's: the relative RMS error ||got - ref|| / ||ref|| (`rel_rms`). fla holds half-precision
kernels to about 1e-3 with it; fp32 ones are held here to a bound derived from the arithmetic:

A float32 kernel and its reference compute the same sums in other orders (blocked, vectorised, with or
without FMA), so each carries its own rounding, about u = 2^-24 per operation times how much the sum
amplifies it: its condition number

    kappa = rms(sum |terms|) / rms(|sum|)        (`matmul_condition` for a product a @ b)

which is 1 where no terms cancel, ~sqrt(n) for a sum of n random terms (so the reduction length is in
it), and far more where they do cancel (q . k near 0). Two such results differ by a few u kappa:
measured at most 2.7 u kappa for the recurrent decoding steps (Dh 8-128, 5 chained steps, 10-40 seeds,
kappa up to 3e4) and 1.6 u kappa for the GEMV (K 1-1029, N 1-680, 6 seeds), on the scalar and AVX2
paths, on an Intel Xeon with AVX-512 (an fp32 bound of 1e-6 flat failed there for both).
`fp32_bound(kappa)` = FP32_ORDER u kappa = 16 u kappa (~1e-6 kappa) is 6x the worst of those. A real
bug (a wrong sign, a missed or doubled term) moves the result by a whole term, i.e. a relative error of
O(1 / n) to O(1) times kappa: orders of magnitude above the bound.
"""
from __future__ import annotations

from torch import Tensor

U_FP32 = 2.0 ** -24  # fp32 unit roundoff (half of torch.finfo(torch.float32).eps)
FP32_ORDER = 16  # in units of u kappa: two fp32 evaluations of the same sums in other orders (see above)


def rel_rms(got: Tensor, ref: Tensor) -> float:
    """Relative RMS error of `got` against `ref`, computed in float64 (any dtypes). An all-zero `ref`
    is compared absolutely (the inputs being O(1))."""
    got, ref = got.detach().double(), ref.detach().double()
    norm = ref.square().mean().sqrt()
    return ((got - ref).square().mean().sqrt() / (norm if norm > 0 else 1.0)).item()


def matmul_condition(a: Tensor, b: Tensor) -> float:
    """kappa of a @ b: rms(|a| @ |b|) / rms(a @ b), in float64 (see the module docstring)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a.abs() @ b.abs()).square().mean().sqrt() / (a @ b).square().mean().sqrt()).item()


def fp32_bound(kappa: float = 1.0) -> float:
    """Largest relative RMS error allowed between two fp32 evaluations of sums of condition `kappa`
    (1: no cancellation, e.g. elementwise ops) that differ only in the order of their operations."""
    return FP32_ORDER * U_FP32 * max(1.0, kappa)


INT8_STEP = 1 / 127  # one step of BitLinear's per-token absmax int8 quantiser, relative to the token's max


def assert_equal_up_to_int8_flips(got: Tensor, ref: Tensor, agree: float = 1e-4) -> None:
    """`got` [..., T, D] against `ref` through BitLinear, which rounds each token's activations to int8:
    a last-bit difference upstream (attention summing in another order) can move an activation across a
    rounding boundary and change that token's output, and through the cache later ones', by about one
    int8 step of the largest output (measured <= 6.6e-3 = 0.84 steps over 40 seeds x 14 ternary decoding
    cases; 1-2 seeds in 40 flip per case, up to 7 of 26 tokens then off). So every token within 4 steps
    (5x the worst), and the median token within `agree`, the fp32 agreement of the paths (a flip moves
    few tokens; a real bug moves them all)."""
    per_token = ((got - ref).abs().amax(-1) / ref.abs().max()).flatten()
    assert per_token.max() <= 4 * INT8_STEP, f"a token off by {per_token.max():.2e} (> 4 int8 steps)"
    assert per_token.median() <= agree, f"the median token off by {per_token.median():.2e} (> {agree:.0e})"
