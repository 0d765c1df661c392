"""The feed-forward half of a transformer-style block: y = x + W_down (act(W_gate n) * (W_up n)), with
n = rms_norm(x) * norm_weight and act SiLU (SwiGLU) or squared ReLU.

- `glu_block_reference` (naive.py): pure PyTorch, the oracle (and the training path);
- `glu_block_cpp` (cpu.py): one fused C++ call for CPU, fp32, a few tokens (decoding).

x [..., D] (at most cpu.MAX_ROWS rows for the kernel), norm_weight [D], w_gate / w_up [F, D],
w_down [D, F] -> [..., D]. Registered as op "glu_block": "reference" everywhere, "cpp" on CPU
(priority 10) where the extension builds and the CPU has AVX2+FMA.
"""
from .. import dispatch
from .cpu import available, glu_block_cpp
from .naive import ACTIVATIONS, glu_activation, glu_block_reference

dispatch.register("glu_block", "reference", glu_block_reference)
dispatch.register("glu_block", "cpp", glu_block_cpp, available=available, priority=10)

__all__ = ["ACTIVATIONS", "glu_activation", "glu_block_cpp", "glu_block_reference"]
