"""The growable KV buffer: appends in place while there is room, grows by copying once, and states stay
immutable (two continuations from one state do not corrupt each other)."""
import pytest
import torch

from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.backbones.kv_cache import KVBuffer, KVCache, grown_capacity
from latentlm.backbones.transformer import KVCache as ReexportedKVCache
from latentlm.backbones.yoco import YOCOState

B, H, DH = 2, 3, 4


def kv(t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, t, DH, generator=g), torch.randn(B, H, t, DH, generator=g)


def test_growth_policy():
    assert grown_capacity(1) == 512  # 1 + 256, rounded up to a multiple of 256
    assert grown_capacity(256) == 512
    assert grown_capacity(4096) == 4096 + 512  # slack 1/8 of the length beyond 2048
    for n in (1, 100, 1000, 5000, 70_000):
        cap = grown_capacity(n)
        assert cap % 256 == 0 and n + 256 <= cap <= n + max(256, n // 8) + 255


def test_append_in_place_reuses_storage_while_capacity_lasts():
    k0, v0 = kv(5)
    buf = KVBuffer.from_tensors(k0, v0)
    assert buf.capacity == 5 and buf.keys.data_ptr() == k0.data_ptr()  # wrapped, not copied
    buf = buf.append(*kv(1, seed=1))  # full: grows once
    ptr, cap = buf.keys.data_ptr(), buf.capacity
    assert cap == grown_capacity(6)
    ks, vs = [k0, kv(1, seed=1)[0]], [v0, kv(1, seed=1)[1]]
    for i in range(2, cap - 5 + 1):
        k, v = kv(1, seed=i)
        buf = buf.append(k, v)
        ks.append(k)
        vs.append(v)
        assert buf.keys.data_ptr() == ptr and buf.capacity == cap, f"copied at step {i}"
    assert buf.length == cap
    assert torch.equal(buf.keys, torch.cat(ks, 2)) and torch.equal(buf.values, torch.cat(vs, 2))


def test_lower_precision_appends_stay_in_place():
    """fp16 positions (YOCO's fp16 global KV, decoding from a state an fp32 forward made) go into fp32
    storage in place and exactly; fp32 into fp16 storage would round, so it grows into fp32 storage."""
    buf = KVBuffer.from_tensors(*kv(5)).append(*kv(1, seed=1))
    ptr = buf.keys.data_ptr()
    k, v = (x.half() for x in kv(1, seed=2))
    out = buf.append(k, v)
    assert out.keys.data_ptr() == ptr and out.keys.dtype == torch.float32
    assert torch.equal(out.keys[:, :, -1:], k.float()) and torch.equal(out.values[:, :, -1:], v.float())
    half = KVBuffer.from_tensors(*(x.half() for x in kv(5))).append(*(x.half() for x in kv(1, seed=1)))
    wide = half.append(*kv(1, seed=2))
    assert wide.keys.dtype == torch.float32 and torch.equal(wide.keys[:, :, -1:], kv(1, seed=2)[0])


def test_growth_copies_correctly():
    k0, v0 = kv(250)
    buf = KVBuffer.from_tensors(k0, v0).append(*kv(3, seed=1))  # 253 of 512
    k2, v2 = kv(400, seed=2)  # 653 > 512: grows
    grown = buf.append(k2, v2)
    assert grown.capacity == grown_capacity(653) and grown.keys.data_ptr() != buf.keys.data_ptr()
    assert torch.equal(grown.keys, torch.cat([k0, kv(3, seed=1)[0], k2], 2))
    assert torch.equal(grown.values, torch.cat([v0, kv(3, seed=1)[1], v2], 2))
    assert torch.equal(buf.keys, torch.cat([k0, kv(3, seed=1)[0]], 2))  # the old state is unchanged


def test_branching_from_one_state_twice():
    base = KVBuffer.from_tensors(*kv(7)).append(*kv(1, seed=1))  # 8 positions, room to spare
    snapshot = (base.keys.clone(), base.values.clone())
    ka, ka2, kb, kb2 = kv(2, seed=10), kv(1, seed=11), kv(3, seed=20), kv(1, seed=21)
    a = base.append(*ka)  # in place: base is the newest state on its storage
    b = base.append(*kb)  # base is no longer the newest: copies
    a2, b2 = a.append(*ka2), b.append(*kb2)  # each branch keeps going
    assert a.keys.data_ptr() == base.keys.data_ptr() and b.keys.data_ptr() != base.keys.data_ptr()
    assert torch.equal(base.keys, snapshot[0]) and torch.equal(base.values, snapshot[1])
    for got, parts in ((a2, (ka, ka2)), (b2, (kb, kb2))):
        assert torch.equal(got.keys, torch.cat([snapshot[0]] + [p[0] for p in parts], 2))
        assert torch.equal(got.values, torch.cat([snapshot[1]] + [p[1] for p in parts], 2))


@torch.no_grad()
@pytest.mark.parametrize("kind", ["transformer", "yoco"])
def test_two_continuations_of_one_model_state_are_independent(kind):
    """Decoding twice from one state (as the benchmark does) gives the same, correct, outputs."""
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(kind=kind, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    x = torch.randn(1, 12, 32)
    full, _ = model(x)
    _, state = model(x[:, :8])
    _, state = model(x[:, 8:9], state)  # grown: decoding from here writes in place
    outs = []
    for branch in range(2):
        s, ys = state, []
        for i in range(9, 12):
            y, s = model(x[:, i:i + 1], s)
            ys.append(y)
        outs.append(torch.cat(ys, 1))
        _, s = model(torch.randn(1, 1, 32), s)  # a diverging extra step must not leak into the next branch
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - full[:, 9:]).abs().max() <= 1e-4 * full.abs().max()


def test_from_tensors_round_trip():
    keys, values = zip(*(kv(6, seed=s) for s in range(3)))
    valid = torch.ones(B, 6, dtype=torch.bool)
    cache = KVCache.from_tensors(list(keys), list(values), valid)
    assert ReexportedKVCache is KVCache
    assert cache.length == 6 and not cache.padded
    assert all(torch.equal(a, b) for a, b in zip(cache.keys + cache.values, list(keys) + list(values)))
    valid[1, :2] = False
    assert KVCache.from_tensors(list(keys), list(values), valid).padded
    state = YOCOState.from_tensors([], keys[0], values[0], valid)
    assert torch.equal(state.keys, keys[0]) and torch.equal(state.values, values[0]) and state.padded
    with pytest.raises(ValueError, match="positions"):
        KVCache.from_tensors(list(keys), list(values), valid[:, :5])


@torch.no_grad()
@pytest.mark.parametrize("kind", ["transformer", "longnet", "yoco"])
def test_allocated_bytes_cover_used_bytes(kind):
    torch.manual_seed(0)
    own = {"longnet": dict(segment_lengths=[4, 8], dilation_rates=[1, 2])}.get(kind, {})
    model = build_backbone(BackboneConfig(kind=kind, d_model=32, n_layers=2, n_heads=4, **own)).eval()
    _, state = model(torch.randn(B, 5, 32))
    assert state.allocated_nbytes() == model.state_nbytes(state)  # a prefill state has no spare room
    _, state = model(torch.randn(B, 1, 32), state)
    used, allocated = model.state_nbytes(state), state.allocated_nbytes()
    kv_per_position = (2 if kind != "yoco" else 1) * 2 * B * 4 * 8 * 4  # layers * (k, v) * B * H * Dh * fp32
    assert allocated - used == (grown_capacity(6) - 6) * kv_per_position


def test_tracked_appends_do_not_write_in_place():
    """With autograd recording, appends concatenate: backward through two steps works."""
    k0 = torch.randn(B, H, 3, DH, requires_grad=True)
    buf = KVBuffer.from_tensors(k0, k0 * 2)
    q = torch.randn(B, H, 1, DH, requires_grad=True)
    loss = 0
    for _ in range(2):
        buf = buf.append(q, q)
        loss = loss + (buf.keys * buf.values).sum()
    loss.backward()
    assert k0.grad is not None and q.grad is not None
