"""Decoding a sequence step by step: a prefill, then one token at a time from its state (the path a
model takes when it generates), for tests that hold it to the parallel forward."""
import torch


def prefill_then_decode(model, x: torch.Tensor, prefill: int):
    """model(x[:, :prefill]), then each later token of x [B, T, D] from the state so far: the outputs
    [B, T, D] concatenated, and the last state. No autograd."""
    with torch.no_grad():
        y, state = model(x[:, :prefill])
        outs = [y]
        for i in range(prefill, x.shape[1]):
            y, state = model(x[:, i:i + 1], state)
            outs.append(y)
    return torch.cat(outs, 1), state
