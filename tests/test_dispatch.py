import pytest
import torch

from latentlm.kernels import dispatch


def test_best_available_wins_and_reference_can_be_forced(monkeypatch):
    dispatch.register("toy_op", "reference", lambda x: x + 1)
    dispatch.register("toy_op", "fast", lambda x: x + 1, available=lambda d: d.type == "cpu", priority=10)
    dispatch.register("toy_op", "gpu", lambda x: x + 1, available=lambda d: d.type == "cuda", priority=20)
    assert dispatch.choose("toy_op", "cpu").name == "fast"
    assert dispatch.implementations("toy_op") == ["gpu", "fast", "reference"]
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("toy_op", "cpu").name == "reference"
    assert dispatch.choose("toy_op", torch.device("cpu")).fn(1) == 2


def test_unknown_op():
    with pytest.raises(KeyError, match="no implementation"):
        dispatch.choose("no_such_op", "cpu")
