"""Attention over a KV cache with grouped-query attention (GQA): the function against an explicit
repeat_interleave reference, GQA models against MHA models with duplicated KV heads, and decoding
without padding attending without a mask."""
import pytest
import torch
import torch.nn.functional as F

from tolerance import rel_rms
from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.kernels import dispatch
from latentlm.backbones.attention import attend
from latentlm.kernels.decode_attention import decode_attention_reference
from latentlm.backbones.transformer import attention_mask

B, H, DH = 2, 6, 8


def qkv(tq: int, s: int, hkv: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, tq, DH, generator=g), torch.randn(B, hkv, s, DH, generator=g),
            torch.randn(B, hkv, s, DH, generator=g))


def reference(q, k, v, mask=None, causal=False):
    """MHA over keys and values repeated for each query head of their group."""
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask,
                                          is_causal=causal)


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("hkv", [6, 3, 2, 1])
def test_attend_matches_repeat_interleave(hkv):
    valid = torch.ones(B, 11, dtype=torch.bool)
    valid[1, :3] = False
    q, k, v = qkv(11, 11, hkv)
    assert rel_max(attend(q, k, v, causal=True), reference(q, k, v, causal=True)) <= 1e-6  # whole sequence
    mask = attention_mask(valid, 11)
    assert rel_max(attend(q, k, v, mask), reference(q, k, v, mask)) <= 1e-6  # padded
    q, k, v = qkv(4, 11, hkv, seed=1)
    mask = attention_mask(valid, 4)
    assert rel_max(attend(q, k, v, mask), reference(q, k, v, mask)) <= 1e-6  # continuation over a cache
    q, k, v = qkv(1, 11, hkv, seed=2)
    # decoding, no mask: the decode attention op, fp32 in another summation order (as below; measured
    # <= 5.0e-7 over 200 seeds, the SDPA calls above equal the reference bit for bit)
    assert rel_max(attend(q, k, v), reference(q, k, v)) <= 1e-5


@pytest.mark.parametrize("s", [29, 549])
@pytest.mark.parametrize("hkv", [6, 3, 1])
def test_decode_attention_reference_matches_repeat_interleave(hkv, s):
    torch.manual_seed(0)
    store_k, store_v = torch.randn(B, hkv, s + 11, DH), torch.randn(B, hkv, s + 11, DH)
    k, v = store_k[:, :, :s], store_v[:, :, :s]  # strided views, as a KV buffer with spare room gives
    q = torch.randn(B, H, 1, DH)
    assert rel_max(decode_attention_reference(q, k, v), reference(q, k, v)) <= 1e-5  # fp32, another summation order
    # bf16: against fp32 attention on the same bf16 inputs, in relative RMS (tests/tolerance.py): the
    # rounding of the scores, weights and output to bf16 (u = 2^-8), measured <= 3.0e-3 over 200 seeds
    # (against the fp32 inputs, their rounding amplified by the weighted sum reached 1.4e-2 in max error)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    bf = decode_attention_reference(qb, kb, vb)
    assert bf.dtype == torch.bfloat16 and rel_rms(bf, reference(qb.float(), kb.float(), vb.float())) <= 2e-2


def test_decoding_goes_through_the_decode_attention_op(monkeypatch):
    calls = []
    impl = dispatch.choose("decode_attention", "cpu")
    monkeypatch.setattr(dispatch, "choose", lambda op, device: calls.append(op) or impl)
    for hkv in (6, 2):
        q, k, v = qkv(1, 30, hkv)
        assert rel_max(attend(q, k, v), reference(q, k, v)) <= 1e-5
    q, k, v = qkv(4, 30, 2)
    attend(q, k, v, attention_mask(torch.ones(B, 30, dtype=torch.bool), 4))  # a continuation: SDPA
    assert calls == ["decode_attention", "decode_attention"]


def test_head_counts_must_divide():
    q, k, v = qkv(1, 5, 4)
    with pytest.raises(ValueError, match="multiple of 4 KV heads"):
        attend(q, k, v)


def test_equal_heads_is_the_old_mha_math():
    """n_kv_heads == n_heads: the same parameters as the default and the same SDPA call as before GQA
    (decoding one token goes through the decode_attention op: the same maths, another kernel)."""
    q, k, v = qkv(7, 7, H)
    assert torch.equal(attend(q, k, v, causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    q, k, v = qkv(1, 7, H)
    assert rel_max(attend(q, k, v), F.scaled_dot_product_attention(q, k, v)) <= 1e-5
    for kind in ("transformer", "yoco"):
        torch.manual_seed(0)
        mha = build_backbone(BackboneConfig(kind=kind, d_model=48, n_layers=2, n_heads=H)).eval()
        same = build_backbone(BackboneConfig(kind=kind, d_model=48, n_layers=2, n_heads=H, n_kv_heads=H)).eval()
        same.load_state_dict(mha.state_dict())  # same names and shapes
        x = torch.randn(B, 9, 48)
        with torch.no_grad():
            assert torch.equal(mha(x)[0], same(x)[0])


def duplicated_kv_heads(state: dict, kind: str, d: int, hkv: int, g: int, dh: int) -> dict:
    """The state dict of the MHA model equal to a GQA model: each KV head repeated for its g query heads."""
    out = dict(state)
    for name, w in state.items():
        if kind == "transformer" and name.endswith("attn.qkv.weight"):
            q, k, v = w.split([d, hkv * dh, hkv * dh])
            rep = [x.view(hkv, dh, d).repeat_interleave(g, 0).reshape(-1, d) for x in (k, v)]
            out[name] = torch.cat([q, *rep])
        if kind == "yoco" and name == "kv.weight":
            out[name] = w.view(2, hkv, dh, d).repeat_interleave(g, 1).reshape(-1, d)
    return out


@pytest.mark.parametrize("kind,extra", [("transformer", {}),
                                        ("yoco", {"chunk_size": 4, "self_decoder": "gated_retention"}),
                                        ("yoco", {"chunk_size": 4, "self_decoder": "sliding_window", "window": 5})])
@pytest.mark.parametrize("hkv", [3, 1])
@torch.no_grad()
def test_gqa_model_is_mha_with_duplicated_kv_heads(kind, extra, hkv):
    d = 48
    torch.manual_seed(0)
    gqa = build_backbone(BackboneConfig(kind=kind, d_model=d, n_layers=2, n_heads=H, n_kv_heads=hkv, **extra)).eval()
    mha = build_backbone(BackboneConfig(kind=kind, d_model=d, n_layers=2, n_heads=H, **extra)).eval()
    mha.load_state_dict(duplicated_kv_heads(gqa.state_dict(), kind, d, hkv, H // hkv, d // H))
    x = torch.randn(B, 11, d)
    valid = torch.ones(B, 11, dtype=torch.bool)
    valid[0, :4] = False
    for kwargs in ({}, {"valid": valid}):
        a, sa = gqa(x, **kwargs)
        b, sb = mha(x, **kwargs)
        assert rel_max(a, b) <= 1e-5
        assert gqa.state_nbytes(sa) < mha.state_nbytes(sb)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["transformer", "bitnet", "yoco"])
def test_decoding_without_padding_needs_no_mask(kind, monkeypatch):
    """One new token and no padding anywhere: attention runs without a mask; with padding, with one."""
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(kind=kind, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    calls = []

    def spy(q, k, v, mask=None, causal=False):
        calls.append((q.shape[2], mask is None, causal))
        return attend(q, k, v, mask, causal)

    module = "latentlm.backbones.yoco" if kind == "yoco" else "latentlm.backbones.transformer"
    monkeypatch.setattr(f"{module}.attend", spy)
    x = torch.randn(B, 6, 32)
    _, state = model(x)
    calls.clear()
    model(x[:, :1], state)
    assert calls and all(c == (1, True, False) for c in calls)
    valid = torch.ones(B, 6, dtype=torch.bool)
    valid[1, :2] = False
    _, state = model(x, valid=valid)
    assert state.padded
    calls.clear()
    model(x[:, :1], state)
    assert calls and all(c == (1, False, False) for c in calls)
    _, state = model(x)
    calls.clear()
    model(x[:, :3], state)  # a continuation of several tokens: the bottom-right causal mask
    assert calls and all(c == (3, False, False) for c in calls)

