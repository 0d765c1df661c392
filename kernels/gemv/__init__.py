"""Small-batch linear layer (decoding): y = x . weight^T + bias with only a few rows of x.

- `small_batch_linear_reference` (naive.py): `F.linear`, the oracle;
- `small_batch_linear_cpp` (cpu.py): fused C++ GEMV for CPU, fp32, that streams the weight once
  for all rows of x at close to memory bandwidth, small matrices included.

x [..., K] (at most cpu.MAX_ROWS rows: the product of the leading dims), weight [N, K], bias [N] or
None -> [..., N]; other inputs (more rows, not fp32, an autograd graph to record...) go from the
kernel to the reference. Registered as op "small_batch_linear": "reference" everywhere, "cpp" on
CPU (priority 10) where the extension builds and the CPU has AVX2+FMA.
"""
from .. import dispatch
from .cpu import available, small_batch_linear_cpp
from .naive import small_batch_linear_reference

dispatch.register("small_batch_linear", "reference", small_batch_linear_reference)
dispatch.register("small_batch_linear", "cpp", small_batch_linear_cpp, available=available, priority=10)

__all__ = ["small_batch_linear_cpp", "small_batch_linear_reference"]
