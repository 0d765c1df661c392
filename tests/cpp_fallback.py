"""A check shared by the C++ kernel tests: when an extension cannot be built, its op warns once and
then returns exactly what the PyTorch reference returns."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def assert_reference_after_failed_build(monkeypatch, cpu_module, call: Callable[[], torch.Tensor],
                                        reference: Callable[[], torch.Tensor]) -> None:
    """Make `cpu_module.EXTENSION` fail to build (no compiler), then call the op twice: one warning
    saying it could not be built, `available()` false, and the reference's result bit for bit."""
    def no_compiler():
        raise RuntimeError("c++: command not found")

    monkeypatch.setattr(cpu_module.EXTENSION, "build", no_compiler)
    monkeypatch.setattr(cpu_module.EXTENSION, "_ext", None)  # undone after the test: the built module comes back
    monkeypatch.setattr(cpu_module.EXTENSION, "_tried", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [call() for _ in range(2)]
        assert not cpu_module.available("cpu")
    messages = [str(m.message) for m in caught]
    assert len(messages) == 1 and "could not be built" in messages[0], messages
    expect = reference()
    assert all(torch.equal(o, expect) for o in outs)
