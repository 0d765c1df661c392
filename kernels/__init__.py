"""Kernels: a pure-PyTorch reference for every op (the oracle and CPU fallback) beside each fast path.

This package imports nothing else of latentlm.
"""
