"""RetNet: parallel == chunkwise == prefill + recurrent decoding; left padding; constant-size state; the
fused decoding step (also YOCO's) taken whenever nothing is masked."""
import math

import pytest
import torch

from latentlm.backbones import build_backbone
from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import apply_rotary, rotary_angles
from latentlm.backbones.retnet import PARALLEL_MAX_CHUNKS, RetNet, retnet_log_decay
from latentlm.kernels import dispatch
from stepwise import prefill_then_decode

B, T, D, H, L, C = 2, 13, 32, 4, 2, 4  # T=13 is not a multiple of chunk_size=4
TOL = 1e-4


def make(**kw):
    torch.manual_seed(0)
    cfg = BackboneConfig(**{"kind": "retnet", "d_model": D, "n_layers": L, "n_heads": H, "chunk_size": C, **kw})
    return RetNet(cfg).eval()


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model():
    return make()


def test_decays_are_the_papers():
    g = retnet_log_decay(8)
    log_gamma = torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(8)], dtype=torch.float64)
    assert torch.allclose(g.double(), log_gamma, rtol=1e-7, atol=0)  # fp32-exact
    assert (retnet_log_decay(40) < 0).all()  # 2^-44 is not rounded away: every head still decays


def test_forms_are_chosen_by_length_and_state(model):
    assert model.choose_form(PARALLEL_MAX_CHUNKS * C, None) == "parallel"
    assert model.choose_form(PARALLEL_MAX_CHUNKS * C + 1, None) == "chunk"
    _, state = model(torch.randn(1, 3, D))
    assert model.choose_form(1, state) == "recurrent" and model.choose_form(2, state) == "chunk"


@pytest.mark.parametrize("b", [2, 3])
@pytest.mark.parametrize("prefill", [1, 4, 6, 11])
def test_prefill_then_decode_equals_parallel(model, b, prefill):
    x = torch.randn(b, T, D)
    with torch.no_grad():
        full, full_state = model(x, form="parallel")
        y, state = model(x[:, :prefill])
        outs = [y]
        for i in range(prefill, T):
            y, state = model(x[:, i:i + 1], state)
            outs.append(y)
    assert rel_max(torch.cat(outs, 1), full) <= TOL
    assert state.offset == full_state.offset == T
    for s, ref in zip(state.states, full_state.states):
        assert rel_max(s, ref) <= TOL


@pytest.mark.parametrize("t", [17, 37])  # > PARALLEL_MAX_CHUNKS * chunk_size, not multiples of 4
def test_chunkwise_prefill_equals_parallel(model, t):
    x = torch.randn(3, t, D)
    with torch.no_grad():
        assert model.choose_form(t, None) == "chunk"
        chunked, s_chunk = model(x)
        full, s_full = model(x, form="parallel")
        rec, s_rec = model(x, form="recurrent")
    assert rel_max(chunked, full) <= TOL and rel_max(rec, full) <= TOL
    for a, b, ref in zip(s_chunk.states, s_rec.states, s_full.states):
        assert rel_max(a, ref) <= TOL and rel_max(b, ref) <= TOL


@pytest.mark.parametrize("form", ["chunk", "parallel", "recurrent"])
def test_continuation_in_pieces(model, form):
    """Multi-token continuation from a state (T > 1, crossing chunk boundaries), in any form."""
    x = torch.randn(B, 29, D)
    with torch.no_grad():
        full, _ = model(x, form="parallel")
        y1, state = model(x[:, :3])
        y2, state = model(x[:, 3:10], state, form=form)
        y3, state = model(x[:, 10:], state)  # 19 tokens from a state: chunkwise
        y4, state = model(x[:, 10:11], model(x[:, :10])[1])  # and one token: recurrent
    assert rel_max(torch.cat([y1, y2, y3], 1), full) <= TOL
    assert rel_max(y4, full[:, 10:11]) <= TOL


def test_state_has_constant_size(model):
    x = torch.randn(B, 100, D)
    with torch.no_grad():
        _, state = model(x[:, :10])
        n10 = model.state_nbytes(state)
        for i in range(10, 100):
            _, state = model(x[:, i:i + 1], state)
        n100 = model.state_nbytes(state)
        _, long_state = model(x)  # chunkwise prefill of all 100
    assert n10 == n100 == model.state_nbytes(long_state) == L * B * H * (D // H) ** 2 * 4
    assert state.offset == 100
    for s, ref in zip(state.states, long_state.states):
        assert rel_max(s, ref) <= TOL


@pytest.mark.parametrize("form", [None, "parallel", "chunk", "recurrent"])
def test_left_padding_is_invisible(model, form):
    x = torch.randn(2, 10, D)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :5] = False  # 5 pads: across the first chunk boundary
    padded = x.clone()
    padded[1, :5] = 1e3  # garbage that must not leak
    with torch.no_grad():
        out, state = model(padded, valid=valid, form=form)
        ref, ref_state = model(x[1:, 5:])
        assert torch.isfinite(out).all()
        assert rel_max(out[1, 5:], ref[0]) <= 1e-5
        assert rel_max(out[0], model(x[:1])[0][0]) <= 1e-5  # the unpadded row is untouched
        # The state holds keys rotated at their absolute positions, 5 further on in the padded row:
        # the same state, turned by the rotary angle of 5 positions along its key axis.
        cos, sin = rotary_angles(torch.tensor([5]), D // H, model.config.rope_theta)
        for s, r in zip(state.states, ref_state.states):
            turned = apply_rotary(r[0].transpose(-1, -2), cos, sin).transpose(-1, -2)
            assert rel_max(s[1], turned) <= 1e-5
        # and decoding continues correctly after a padded prefill, one token and several
        nxt = torch.randn(2, 5, D)
        step, state = model(nxt[:, :1], state)
        more, _ = model(nxt[:, 1:], state)
        ref_more, _ = model(torch.cat([x[1:, 5:], nxt[1:]], 1))
    assert rel_max(torch.cat([step, more], 1)[1], ref_more[0, -5:]) <= 1e-5


def test_training_gradients_agree_across_forms():
    """The parallel (training) form and the chunkwise form give the same parameter gradients."""
    model = make().train()
    x = torch.randn(B, 23, D)
    w = torch.randn(B, 23, D)
    grads = {}
    for form in ("parallel", "chunk"):
        model.zero_grad()
        out, _ = model(x, form=form)
        (out * w).sum().backward()
        grads[form] = [p.grad.clone() for p in model.parameters()]
    for a, ref in zip(grads["chunk"], grads["parallel"]):
        assert torch.isfinite(ref).all()
        assert rel_max(a, ref) <= TOL


def test_train_after_inference_mode():
    """The cached decays made during an inference-mode generation still serve training."""
    retnet_log_decay.cache_clear()
    model = make()
    with torch.inference_mode():
        model(torch.randn(1, 3, D))
    out, _ = model.train()(torch.randn(1, 9, D))
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_ternary_and_relu2_variants_run():
    for kw in ({"ternary": True}, {"ffn_act": "relu2"}):  # BitLinear quantises per token: forms still agree
        model = make(**kw)
        x = torch.randn(B, T, D)
        with torch.no_grad():
            full, _ = model(x)
        stepwise, _ = prefill_then_decode(model, x, 5)
        assert torch.isfinite(full).all() and full.shape == (B, T, D)
        assert rel_max(stepwise, full) <= TOL


def test_bad_form(model):
    with pytest.raises(ValueError, match="form"):
        model(torch.randn(1, 2, D), form="flash")


@pytest.mark.parametrize("kind", ["retnet", "yoco"])
def test_decoding_with_an_all_true_valid_takes_the_fused_step(kind, monkeypatch):
    """RetNet and YOCO's self-decoder: a one-token step given valid=all True masks nothing, so it equals
    the step without `valid` and runs the fused recurrent op, not the op-by-op path kept for padding."""

    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(kind=kind, d_model=D, n_layers=2, n_heads=H, chunk_size=4)).eval()
    chosen, real = [], dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda op, device: chosen.append(op) or real(op, device))
    step_op = "retention_step" if kind == "retnet" else "gated_retention_step"
    x = torch.randn(B, 6, D)
    with torch.no_grad():
        _, state = model(x[:, :5])
        plain, _ = model(x[:, 5:], state)
        chosen.clear()
        given, _ = model(x[:, 5:], state, valid=torch.ones(B, 1, dtype=torch.bool))
    assert step_op in chosen
    assert torch.equal(given, plain)
