import torch

from latentlm.diffusion_head import DiffusionHead, DiffusionHeadConfig


def _toy_batch(g: torch.Generator, n: int = 128):
    """Two conditions, two well separated target clusters."""
    label = torch.randint(0, 2, (n,), generator=g)
    cond = torch.nn.functional.one_hot(label, 4).float()
    target = torch.randn(n, 4, generator=g) * 0.1 + (label[:, None] * 2 - 1) * torch.tensor([2.0, 0.0, 0.0, 1.0])
    return target, cond


def test_loss_decreases_on_fixed_toy_target():
    torch.manual_seed(0)
    head = DiffusionHead(4, 4, DiffusionHeadConfig(width=64, depth=2))
    opt = torch.optim.AdamW(head.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    target, cond = _toy_batch(g)
    eval_gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731 - same noise and timesteps each time
    with torch.no_grad():
        before = head.loss(target, cond, eval_gen()).item()
    for _ in range(300):
        loss = head.loss(target, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = head.loss(target, cond, eval_gen()).item()
    assert after < 0.5 * before, (before, after)

    # sampling with DPM-Solver++ lands on the right cluster for each condition
    cond = torch.nn.functional.one_hot(torch.tensor([0] * 64 + [1] * 64), 4).float()
    s = head.sample(cond, steps=20, generator=torch.Generator().manual_seed(1))
    assert s[:64, 0].mean() < -1.5 and s[64:, 0].mean() > 1.5
    assert s[:64, 3].mean() < -0.5 and s[64:, 3].mean() > 0.5


def test_sampling_is_seeded_and_cfg_batched():
    torch.manual_seed(0)
    head = DiffusionHead(4, 8, DiffusionHeadConfig(width=32, depth=1))
    for p in head.parameters():  # leave the zero init, so that the condition matters
        torch.nn.init.normal_(p, std=0.2)
    cond, uncond = torch.randn(3, 8), torch.randn(3, 8)
    a = head.sample(cond, uncond, cfg_scale=2.0, steps=5, generator=torch.Generator().manual_seed(7))
    b = head.sample(cond, uncond, cfg_scale=2.0, steps=5, generator=torch.Generator().manual_seed(7))
    c = head.sample(cond, uncond, cfg_scale=1.0, steps=5, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 4) and torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_temperature_scales_the_starting_noise():
    """Temperature 1 is the default path; 0.5 starts from half the noise and so lands elsewhere."""
    torch.manual_seed(0)
    head = DiffusionHead(4, 8, DiffusionHeadConfig(width=32, depth=1))
    cond = torch.randn(3, 8)
    draw = lambda t: head.sample(cond, steps=5, generator=torch.Generator().manual_seed(7), temperature=t)  # noqa: E731
    default = head.sample(cond, steps=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(draw(1.0), default)
    assert torch.equal(draw(0.5), draw(0.5))
    assert draw(0.5).norm() < draw(1.0).norm()  # a zero-init head predicts no signal: x shrinks with the noise


def test_epsilon_and_v_objectives_both_train():
    for kind in ("epsilon", "v_prediction"):
        torch.manual_seed(0)
        head = DiffusionHead(4, 4, DiffusionHeadConfig(width=32, depth=1, prediction_type=kind))
        target, cond = _toy_batch(torch.Generator().manual_seed(0))
        loss = head.loss(target, cond)
        loss.backward()
        assert torch.isfinite(loss) and head.net.out.weight.grad is not None
