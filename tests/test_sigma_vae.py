import pytest
import torch

from latentlm.codecs import ImageSigmaVAE, SigmaVAEConfig


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return ImageSigmaVAE(SigmaVAEConfig(latent_dim=16, block_out_channels=(16, 16, 16, 16), norm_num_groups=8)).eval()


def test_encode_decode_shapes(vae):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 64, 16)  # 8x8 latents in raster order
    assert vae.tokens_per_image == 64 and vae.grid == 8
    assert vae.decode(z).shape == (2, 3, 64, 64)


def test_raster_order(vae):
    """Token k of encode() is grid cell (k // 8, k % 8) of the encoder's feature map."""
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    fmap = vae.encoder(x)  # [1, C, 8, 8]
    z = vae.encode(x)
    assert torch.equal(z[0, 8 * 3 + 5], fmap[0, :, 3, 5])


def test_sigma_is_drawn_per_sample_not_learned(vae):
    mu = torch.zeros(4096, 64, 16)
    z = vae.perturb(mu, torch.Generator().manual_seed(0))
    per_sample_std = z.std(dim=(1, 2))  # |sigma| of each sample
    assert per_sample_std.std() > 0.1  # scales differ between samples
    # sigma ~ N(0, C^2): E|sigma| = C * sqrt(2/pi)
    assert abs(per_sample_std.mean().item() - 0.75 * (2 / torch.pi) ** 0.5) < 0.03
    assert not any("sigma" in n or "logvar" in n for n, _ in vae.named_parameters())


def test_loss_is_finite_and_has_gradients(vae):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    loss, logs = vae.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"l1", "mse", "mu_sq"}
    assert all(p.grad is not None for p in vae.parameters())
    vae.zero_grad()


def test_normalisation_round_trip(vae):
    vae.set_latent_stats(torch.rand(8, 3, 64, 64) * 2 - 1, torch.Generator().manual_seed(0))
    z = torch.randn(2, 64, 16)
    assert torch.allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-5)
    assert vae.latent_scale.item() > 0


def test_wrong_shapes_are_rejected(vae):
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        vae.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 64, 16\]"):
        vae.decode(torch.zeros(1, 10, 16))


def test_config_validation():
    with pytest.raises(ValueError, match="latent_dim"):
        SigmaVAEConfig(latent_dim=4)
    with pytest.raises(ValueError, match="multiple of norm_num_groups"):
        SigmaVAEConfig(block_out_channels=(20, 32, 64, 64), norm_num_groups=16)
