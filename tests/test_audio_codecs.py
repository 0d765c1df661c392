"""Audio codecs: the audio sigma-VAE and the EnCodec tokenizer (shapes, rates, sigma, quantizer training,
save/load), their training task (`train_codec` on speech crops) and their evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentlm.checkpoint import load_codec, save_codec
from latentlm.codecs import CODECS, AudioSigmaVAE, AudioSigmaVAEConfig, EncodecTokenizer, EncodecTokenizerConfig
from latentlm.config_io import load_yaml_config
from latentlm.data import espeak
from latentlm.errors import CheckpointError, ConfigError
from latentlm.evaluation.audio_codec import codec_rates, eval_audio_codec
from latentlm.training.codec import CodecTrainConfig, SpeechDataConfig, train_codec

needs_espeak = pytest.mark.skipif(not espeak.available(), reason=f"libespeak-ng is not installed: {espeak.INSTALL_HINT}")

TINY_VAE = dict(latent_dim=8, ratios=(4, 4), n_filters=4)  # hop 16
TINY_TOK = dict(ratios=(4, 4), n_filters=4, dimension=8, n_q=3, bins=1024, quantizer_warmup=0)


def tiny_vae() -> AudioSigmaVAE:
    torch.manual_seed(0)
    return AudioSigmaVAE(AudioSigmaVAEConfig(**TINY_VAE)).eval()


def tiny_tokenizer(**kw) -> EncodecTokenizer:
    torch.manual_seed(0)
    return EncodecTokenizer(EncodecTokenizerConfig(**(TINY_TOK | kw)))


def waves(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(t) / 16_000
    tone = torch.sin(2 * math.pi * (150 + 300 * torch.rand(b, 1, generator=g)) * n)
    return 0.1 * tone + 0.01 * torch.randn(b, t, generator=g)


def trained_tokenizer(steps: int = 2) -> EncodecTokenizer:
    tok = tiny_tokenizer().train()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    for s in range(steps):
        loss, _ = tok.loss(waves(4, 2048, seed=s))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return tok.eval()


# --- rates and shapes ------------------------------------------------------------------------------


def test_default_sigma_vae_is_12_5_hz_by_32():
    vae = AudioSigmaVAE().eval()
    assert vae.modality == "audio" and vae.sample_rate == 16_000 and vae.hop_length == 1280
    assert vae.frames_per_second == 12.5 and vae.latent_dim == 32 and vae.floats_per_second == 400
    with torch.no_grad():
        z = vae.encode(waves(2, 32_000))  # 2 s
        assert z.shape == (2, 25, 32)
        assert vae.decode(z).shape == (2, 32_000)
    assert sum(p.numel() for p in vae.parameters()) < 2_000_000


def test_default_tokenizer_is_50_hz_with_n_q_codebooks():
    tok = EncodecTokenizer().eval()
    assert tok.modality == "audio" and tok.hop_length == 320 and tok.frames_per_second == 50
    assert tok.n_q == 8 and tok.bins == 1024 and tok.bitrate == 50 * 8 * 10
    with torch.no_grad():
        codes = tok.encode(waves(1, 16_000)[0])  # 1 s
        assert codes.shape == (8, 50)
        assert tok.decode(codes).shape == (16_000,)
        assert tok.encode_batch(waves(3, 16_000)).shape == (3, 8, 50)


@pytest.mark.parametrize("t", [1, 15, 16, 17, 16 * 7 + 5])
def test_lengths_that_are_not_a_multiple_of_the_hop(t):
    """T samples -> ceil(T/hop) frames (zero-padded on the right); decode gives frames*hop samples and
    reconstruct crops back to T."""
    vae, tok = tiny_vae(), tiny_tokenizer().eval()
    x = waves(2, t)
    n = math.ceil(t / 16)
    with torch.no_grad():
        for wav in (x, x[:, None]):  # [B, T] and [B, 1, T]
            assert vae.encode(wav).shape == (2, n, 8)
        assert vae.num_frames(t) == n
        assert vae.decode(vae.encode(x)).shape == (2, n * 16)
        assert vae.reconstruct(x).shape == (2, t)
        codes = tok.encode(x[:1])
        assert codes.shape == (3, n)
        assert tok.decode(codes).shape == (n * 16,)
        assert tok.reconstruct(x).shape == (2, t)


def test_bad_shapes_are_rejected():
    vae, tok = tiny_vae(), tiny_tokenizer().eval()
    with pytest.raises(ValueError, match=r"\[B, N, 8\]"):
        vae.decode(torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="mono"):
        vae.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="encode_batch"):
        tok.encode(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        tok.decode(torch.full((3, 4), 1024))
    with pytest.raises(ValueError, match="codebooks 1..3"):
        tok.decode(torch.zeros(4, 4, dtype=torch.long))


# --- sigma-VAE -------------------------------------------------------------------------------------


def test_sigma_is_drawn_per_sample_and_seeded():
    vae = tiny_vae()
    mu = torch.zeros(2, 50, 8)
    z = vae.perturb(mu, torch.Generator().manual_seed(0))
    s0, s1 = z[0].std().item(), z[1].std().item()
    assert abs(s0 - s1) > 1e-3  # two samples, two sigmas
    assert torch.equal(z, vae.perturb(mu, torch.Generator().manual_seed(0)))  # deterministic given a generator
    assert not torch.equal(z, vae.perturb(mu, torch.Generator().manual_seed(1)))
    many = vae.perturb(torch.zeros(4096, 16, 8), torch.Generator().manual_seed(0)).std(dim=(1, 2))
    assert abs(many.mean().item() - 0.625 * (2 / math.pi) ** 0.5) < 0.03  # E|sigma| for N(0, 0.625^2)
    assert not any("sigma" in n or "logvar" in n for n, _ in vae.named_parameters())


def test_sigma_vae_loss_has_all_terms_and_gradients():
    vae = tiny_vae().train()
    loss, logs = vae.loss(waves(2, 2048))
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"stft", "mel", "l1", "mu_sq"}
    c = vae.config
    expected = c.stft_weight * logs["stft"] + c.mel_weight * logs["mel"] + c.l1_weight * logs["l1"] + c.mu_weight * logs["mu_sq"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is not None for p in vae.parameters())


def test_normalisation_round_trip():
    vae = tiny_vae()
    vae.set_latent_stats([waves(1, 700)[0], waves(1, 1000, seed=1)[0]], torch.Generator().manual_seed(0))
    assert vae.latent_scale.item() > 0 and vae.latent_bias.item() != 0
    z = torch.randn(2, 5, 8)
    assert torch.allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-5)
    assert torch.allclose(vae.normalize(vae.denormalize(z)), z, atol=1e-5)


# --- EnCodec tokenizer -----------------------------------------------------------------------------


def test_codes_are_ints_in_range():
    tok = trained_tokenizer()
    x = 0.3 * torch.randn(2, 3000, generator=torch.Generator().manual_seed(0))
    codes = tok.encode_batch(x)
    assert codes.dtype == torch.int64 and codes.shape == (2, 3, math.ceil(3000 / 16))
    assert codes.min() >= 0 and codes.max() < 1024
    assert len(codes.unique()) > 1  # the codebooks are in use, not one code
    assert tok.encode(x[:1], n_q=2).shape == (2, math.ceil(3000 / 16))  # fewer codebooks
    assert torch.equal(tok.encode(x[:1], n_q=2), codes[0, :2])  # the first codebooks of the full code


def test_penalty_is_in_the_loss_and_the_codebooks_update():
    tok = tiny_tokenizer().train()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    books = lambda: [layer._codebook.embed.clone() for layer in tok.quantizer.vq.layers]  # noqa: E731
    history = [books()]
    for s in range(3):
        loss, logs = tok.loss(waves(4, 2048, seed=s))
        c = tok.config
        recon = c.stft_weight * logs["stft"] + c.mel_weight * logs["mel"] + c.l1_weight * logs["l1"]
        assert loss.item() == pytest.approx(recon + c.penalty_weight * logs["penalty"], rel=1e-5)
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append(books())
    assert logs["penalty"] > 0  # after the first (k-means) step, commitment is no longer exactly 0
    for before, after in zip(history[1], history[-1]):  # the EMA moved every codebook after its k-means init
        assert not torch.equal(before, after)
    assert all(bool(layer._codebook.inited) for layer in tok.quantizer.vq.layers)


def test_quantizer_warmup_bypasses_then_initialises_the_codebooks():
    tok = tiny_tokenizer(quantizer_warmup=2).train()
    books = lambda: torch.stack([layer._codebook.embed.clone() for layer in tok.quantizer.vq.layers])  # noqa: E731
    start = books()
    for s in range(2):
        loss, logs = tok.loss(waves(2, 2048, seed=s))
        assert logs["penalty"] == 0 and logs["perplexity_q1"] == 0
        assert torch.equal(books(), start) and not any(bool(l._codebook.inited) for l in tok.quantizer.vq.layers)
    _, logs = tok.loss(waves(2, 2048, seed=2))  # batch 3: k-means on informative frames, then quantized
    assert logs["perplexity_q1"] > 1 and all(bool(l._codebook.inited) for l in tok.quantizer.vq.layers)
    assert int(tok.train_batches) == 3
    tok.eval()
    tok.loss(waves(2, 2048))
    assert int(tok.train_batches) == 3  # eval-mode losses do not count


def test_dead_codes_are_reseeded_from_the_batch():
    """encodec 0.1.1's own expiry is a no-op (embed is overwritten by the EMA right after), and codes that
    k-means leaves empty become embed_avg / ~1e-5 (inf in fp16); ours re-seeds both from the batch."""
    tok = tiny_tokenizer(n_q=1, dead_code_steps=2).train()
    book = tok.quantizer.vq.layers[0]._codebook
    x = waves(2, 2048)
    tok.loss(x)  # k-means init: 2*128 frames for 1024 codes, so most codes are empty: re-seeded at once
    frames = tok.embed(x).detach().transpose(1, 2).reshape(-1, 8)
    assert book.embed.abs().max() < 1e3 and book.cluster_size.min() >= 1e-3
    nearest = torch.cdist(book.embed, frames).min(dim=1).values
    assert (nearest < 1e-3).float().mean() > 0.5  # re-seeded codes are frames of the batch
    tok.loss(x)
    tok.loss(x)
    assert tok.code_age.max() < 2  # no code stays unused for dead_code_steps = 2
    assert book.embed.abs().max() < 1e3


def test_every_codebooks_commitment_reaches_the_encoder():
    """encodec issue #25: its RVQ forward gives residual codebooks no commitment gradient; ours does."""
    tok = tiny_tokenizer().train()
    tok._quantize_train(torch.randn(2, 8, 64))  # k-means init
    emb = torch.randn(2, 8, 64, requires_grad=True)
    quantized, codes, commits = tok._quantize_train(emb)
    assert commits.shape == (3,) and codes.shape == (3, 2, 64)
    for i in range(3):
        (grad,) = torch.autograd.grad(commits[i], emb, retain_graph=True)
        assert grad.abs().sum() > 0, f"codebook {i + 1}'s commitment loss has no gradient"
    (grad,) = torch.autograd.grad(quantized.sum(), emb)  # one straight-through estimator: identity
    assert torch.allclose(grad, torch.ones_like(grad))


# --- save / load -----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    vae = tiny_vae()
    vae.set_latent_stats(waves(2, 800), torch.Generator().manual_seed(0))
    tok = trained_tokenizer()
    x = waves(2, 1000)
    for name, codec in (("vae", vae), ("tok", tok)):
        loaded = load_codec(save_codec(codec, tmp_path / name))
        assert type(loaded) is type(codec) and loaded.config == codec.config
        with torch.no_grad():
            assert torch.equal(loaded.reconstruct(x), codec.reconstruct(x))
            if name == "vae":
                assert torch.equal(loaded.encode(x), codec.encode(x))
                assert loaded.latent_scale == vae.latent_scale and loaded.latent_bias == vae.latent_bias
            else:
                assert torch.equal(loaded.encode_batch(x), codec.encode_batch(x))


@pytest.mark.parametrize("name", ["vae", "tok"])
def test_half_precision_save_reconstructs_closely(tmp_path, name):
    """The tokenizer's fp16 save once decoded to NaN: codes that k-means left empty held ~1e5-scale vectors
    (inf in fp16); they are now re-seeded from the batch at once."""
    codec = tiny_vae() if name == "vae" else trained_tokenizer()
    if name == "vae":
        codec.set_latent_stats(waves(2, 800), torch.Generator().manual_seed(0))
    x = waves(2, 1000)
    half = load_codec(save_codec(codec, tmp_path / f"{name}16", torch.float16))
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / f"{name}16/model.safetensors")).values()
               if v.is_floating_point())
    with torch.no_grad():
        assert (half.reconstruct(x) - codec.reconstruct(x)).abs().max() < 0.05


def test_export_writes_a_codec_in_half_precision(tmp_path):
    from latentlm.cli.main import main

    vae = tiny_vae()
    vae.set_latent_stats(waves(2, 800), torch.Generator().manual_seed(0))
    source = save_codec(vae, tmp_path / "trained")
    main(["export", str(source), "-o", str(tmp_path / "shipped")])
    half = load_codec(tmp_path / "shipped")
    assert type(half) is AudioSigmaVAE and half.config == vae.config
    assert {v.dtype for v in load_file(str(tmp_path / "shipped/model.safetensors")).values()} == {torch.float16}
    x = waves(2, 1000)
    with torch.no_grad():
        assert (half.reconstruct(x) - vae.reconstruct(x)).abs().max() < 0.05


def test_a_shipped_codec_loads_by_name_and_an_unknown_name_is_explained(tmp_path, monkeypatch):
    import latentlm.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "SHIPPED_CODECS_DIR", tmp_path / "codecs")
    save_codec(tiny_vae(), tmp_path / "codecs" / "speech-vae")
    assert checkpoint.shipped_codecs() == ["speech-vae"]
    assert type(load_codec("speech-vae")) is AudioSigmaVAE
    with pytest.raises(CheckpointError, match=r"no codec 'speech-vea'.*shipped codec \(speech-vae\)"):
        load_codec("speech-vea")


@pytest.mark.parametrize("kind,change", [
    ("audio_sigma_vae", {"ratios": "eight"}),
    ("audio_sigma_vae", {"latent_dim": 1000}),
    ("audio_sigma_vae", {"no_such_field": 1}),
    ("encodec_tokenizer", {"n_q": 0}),
    ("encodec_tokenizer", {"norm": "batch"}),
])
def test_corrupt_codec_config_is_a_checkpoint_error(tmp_path, kind, change):
    codec = tiny_vae() if kind == "audio_sigma_vae" else tiny_tokenizer()
    d = save_codec(codec, tmp_path / "codec")
    config = json.loads((d / "config.json").read_text()) | change
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid codec config"):
        load_codec(d, verify=False)  # past the checksum: the config check itself


def test_registered_kinds():
    assert CODECS["audio_sigma_vae"] == (AudioSigmaVAE, AudioSigmaVAEConfig)
    assert CODECS["encodec_tokenizer"] == (EncodecTokenizer, EncodecTokenizerConfig)


# --- training configs and task ---------------------------------------------------------------------


@pytest.mark.parametrize("name,kind,fps", [("speech-vae", "audio_sigma_vae", 12.5), ("speech-vae-2", "audio_sigma_vae", 12.5),
                                           ("speech-vae-3", "audio_sigma_vae", 12.5),
                                           ("speech-encodec", "encodec_tokenizer", 50),
                                           ("speech-encodec-pre", "audio_sigma_vae", 50),
                                           ("speech-encodec-2", "encodec_tokenizer", 50),
                                           ("speech-encodec-3", "encodec_tokenizer", 50)])
def test_shipped_configs_validate(name, kind, fps):
    from latentlm.training.codec import AUDIO_KINDS
    from pathlib import Path

    import latentlm

    config = load_yaml_config(Path(latentlm.__file__).parent / "configs" / f"{name}.yaml", CodecTrainConfig)
    assert config.kind == kind in AUDIO_KINDS and isinstance(config.data, SpeechDataConfig)
    cls, _ = CODECS[kind]
    codec = cls(config.codec_config())
    assert codec.frames_per_second == fps
    assert codec_rates(codec)["values_per_second"] >= 400


def test_config_data_follows_kind(tmp_path):
    image = CodecTrainConfig.model_validate({})
    assert image.data.source == "shapes" and image.data.n_train == 50_000
    audio = CodecTrainConfig.model_validate({"kind": "audio_sigma_vae", "data": {"n_train": 5}})
    assert audio.data.source == "speech" and audio.data.n_train == 5 and audio.data.crop_seconds == (1.0, 2.0)
    path = tmp_path / "bad.yaml"
    path.write_text("kind: encodec_tokenizer\ndata:\n  crop_seconds: [2.0, 1.0]\n")
    with pytest.raises(ConfigError, match="crop_seconds"):
        load_yaml_config(path, CodecTrainConfig)
    bad_codec = CodecTrainConfig.model_validate({"kind": "encodec_tokenizer", "codec": {"bins": 1}})
    with pytest.raises(ConfigError, match="codec: "):
        bad_codec.codec_config()


TINY_TRAIN_YAML = """
kind: {kind}
codec: {codec}
data: {{n_train: 3, crop_seconds: [0.15, 0.25]}}
stats_utterances: 2
train: {{steps: 30, batch_size: 2, lr: 0.003, warmup_steps: 3, log_every: 1, save_every: 10, seed: 0}}
"""


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@needs_espeak
@pytest.mark.slow
@pytest.mark.parametrize("kind,codec", [
    ("audio_sigma_vae", "{latent_dim: 8, ratios: [4, 4], n_filters: 4}"),
    ("encodec_tokenizer", "{ratios: [4, 4], n_filters: 4, dimension: 8, n_q: 2, bins: 64, quantizer_warmup: 10}"),
])
def test_smoke_training_runs_and_resumes_exactly(tmp_path, kind, codec):
    config = tmp_path / "codec.yaml"
    config.write_text(TINY_TRAIN_YAML.format(kind=kind, codec=codec))
    straight = train_codec(config, tmp_path / "straight", progress=False)
    stopped = train_codec(config, tmp_path / "resumed", stop_after=15, progress=False)
    assert stopped.name == "step_0000015" and not (tmp_path / "resumed" / "final").exists()
    resumed = train_codec(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed == tmp_path / "resumed" / "final" and (tmp_path / "resumed" / "speech_train_3.npz").is_file()
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed") and len(_losses(tmp_path / "straight")) == 30
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    codec = load_codec(resumed)
    if kind == "audio_sigma_vae":
        assert codec.latent_scale.item() != 1.0  # export measured the latent stats
    with pytest.raises(ConfigError, match="--resume"):
        train_codec(config, tmp_path / "resumed", progress=False)


@needs_espeak
def test_batches_are_a_pure_function_of_the_step(tmp_path):
    from latentlm.training.codec import AudioCodecTask

    config = CodecTrainConfig.model_validate(
        {"kind": "audio_sigma_vae", "codec": TINY_VAE, "data": {"n_train": 2, "crop_seconds": [0.2, 0.6]}})
    task = AudioCodecTask(config, tmp_path, progress=False)
    again = AudioCodecTask(config, tmp_path, progress=False)  # from the cache file
    assert torch.equal(task.clips.audio, again.clips.audio)
    b3 = task.batch(3, 4)
    assert torch.equal(b3, again.batch(3, 4)) and b3.shape[1] % 16 == 0
    assert not torch.equal(task.batch(4, 4)[:, :100], b3[:, :100])
    lengths = {task.batch(s, 1).shape[1] for s in range(20)}
    assert len(lengths) > 1 and all(0.2 * 16_000 - 16 <= n <= 0.6 * 16_000 + 16 for n in lengths)


def test_at_init_the_codec_passes_its_input_through():
    """Zero biases: the encoder's latents vary with the wave and the decoder's output with the latents
    (with default biases both were ~constant at init and training never learnt to use z)."""
    torch.manual_seed(0)
    vae = AudioSigmaVAE(AudioSigmaVAEConfig(latent_dim=32, ratios=(8, 8, 5, 4), n_filters=4)).eval()
    assert all(p.abs().sum() == 0 for n, p in vae.named_parameters() if n.endswith("bias"))
    x = waves(2, 12_800)
    with torch.no_grad():
        mu = vae.encode(x)  # [2, 10, 32]
        y, y2 = vae.decode(mu), vae.decode(mu + 0.1 * mu.std() * torch.randn_like(mu))
    assert mu.std(dim=1).mean() > 0.3 * mu.abs().mean()  # varies over time as much as its size
    assert ((y - y2).norm() / y.norm()) > 0.02


@needs_espeak
def test_sigma_noise_waits_then_ramps_up(tmp_path):
    """noise_delay_steps without sigma-noise, then a linear ramp over noise_warmup_steps."""
    from latentlm.training.codec import AudioCodecTask

    config = CodecTrainConfig.model_validate(
        {"kind": "audio_sigma_vae", "codec": TINY_VAE, "data": {"n_train": 2, "crop_seconds": [0.2, 0.3]},
         "noise_delay_steps": 4, "noise_warmup_steps": 8})
    task = AudioCodecTask(config, tmp_path, progress=False)
    fractions = []
    for step in (0, 4, 8, 12, 20):
        _, logs = task.loss(task.model, task.batch(step, 2))
        fractions.append(logs["noise_fraction"])
    assert fractions == [0.0, 0.0, 0.5, 1.0, 1.0]
    x = task.batch(0, 2)  # no noise: the loss is a function of the weights and the batch alone
    torch.manual_seed(1)
    a, _ = task.model.loss(x, noise_fraction=0.0)
    torch.manual_seed(2)
    b, _ = task.model.loss(x, noise_fraction=0.0)
    assert torch.equal(a, b)


# --- evaluation ------------------------------------------------------------------------------------


def test_eval_audio_codec_reports_distances_and_rates():
    x = [waves(1, 3000)[0], waves(1, 4100, seed=1)[0]]
    vae_r = eval_audio_codec(tiny_vae(), waves=x)
    tok_r = eval_audio_codec(trained_tokenizer(), waves=x)
    for r in (vae_r, tok_r):
        assert r["n"] == 2 and r["mel_distance"] > 0 and r["stft_distance"] > 0
    assert vae_r["frames_per_second"] == 1000 and vae_r["values_per_second"] == 8000 and "mel_distance_perturbed" in vae_r
    assert tok_r["values_per_second"] == 3000 and tok_r["bits_per_second"] == 30_000 and tok_r["compression"] == 16_000 / 3000
    # a perfect codec scores zero
    identity = tiny_vae()
    identity.reconstruct = lambda w: w
    assert eval_audio_codec(identity, waves=x)["mel_distance"] == 0


@needs_espeak
def test_init_from_starts_a_codec_run_from_trained_weights(tmp_path):
    """`init_from` (a codec continued with a fresh schedule) loads the saved weights; a codec of another
    kind or shape is a one-line ConfigError."""
    from latentlm.checkpoint import save_codec
    from latentlm.codecs import AudioSigmaVAE, AudioSigmaVAEConfig
    from latentlm.training.codec import AudioCodecTask

    torch.manual_seed(3)
    trained = save_codec(AudioSigmaVAE(AudioSigmaVAEConfig(**TINY_VAE)), tmp_path / "trained")
    data = {"n_train": 2, "crop_seconds": [0.2, 0.3]}
    config = CodecTrainConfig.model_validate(
        {"kind": "audio_sigma_vae", "codec": TINY_VAE, "data": data, "init_from": str(trained)})
    task = AudioCodecTask(config, tmp_path, progress=False)
    saved = load_codec(trained).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in task.model.state_dict().items())
    wider = CodecTrainConfig.model_validate({"kind": "audio_sigma_vae", "codec": TINY_VAE | {"latent_dim": 4},
                                             "data": data, "init_from": str(trained)})
    with pytest.raises(ConfigError, match="init_from: .* another architecture"):
        AudioCodecTask(wider, tmp_path, progress=False)
    tokenizer = {"ratios": [4, 4], "n_filters": 4, "dimension": 8, "n_q": 2, "bins": 64}
    unrestored = CodecTrainConfig.model_validate({"kind": "encodec_tokenizer", "codec": tokenizer, "data": data,
                                                  "init_from": str(trained)})
    with pytest.raises(ConfigError, match="init_from: .*restore_scale: true"):
        AudioCodecTask(unrestored, tmp_path, progress=False)
    narrower = CodecTrainConfig.model_validate({"kind": "encodec_tokenizer", "data": data, "init_from": str(trained),
                                                "codec": tokenizer | {"dimension": 4, "restore_scale": True}})
    with pytest.raises(ConfigError, match="latent_dim 8 vs dimension 4"):
        AudioCodecTask(narrower, tmp_path, progress=False)
    import latentlm

    image = Path(latentlm.__file__).parent / "pretrained" / "shapes-tiny" / "image_codec"
    other_kind = CodecTrainConfig.model_validate({"kind": "encodec_tokenizer", "codec": tokenizer, "data": data,
                                                  "init_from": str(image)})
    with pytest.raises(ConfigError, match="holds a ImageSigmaVAE, not a EncodecTokenizer"):
        AudioCodecTask(other_kind, tmp_path, progress=False)


def test_a_tokenizer_starts_from_a_sigma_vae_and_restores_its_scale(tmp_path):
    """With `restore_scale` the tokenizer's decoder reads the encoder's own units, so a sigma-VAE's SEANet
    taken over whole reconstructs through the unquantized path exactly as the sigma-VAE does; training
    then runs with the quantizer in between."""
    vae = tiny_vae()
    tok = tiny_tokenizer(restore_scale=True, n_q=2, bins=64)
    tok.load_seanet(vae)
    x = waves(4, 2048)
    tok.train()
    with torch.no_grad():
        for _ in range(30):  # running statistics of the standardisation settle on this batch
            tok.latent_norm(tok._encode_raw(x))
    tok.eval()
    with torch.no_grad():
        through = tok.decoder(tok._decoder_input(tok.embed(x)))[:, 0, : x.shape[-1]]
        assert torch.allclose(through, vae.reconstruct(x), atol=1e-4)
        coded = tok.reconstruct(x)  # quantized: near, not equal
    assert coded.shape == x.shape and torch.isfinite(coded).all()
    tok.train()
    loss, logs = tok.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and tok.encoder.model[0].conv.conv.weight_v.grad.abs().sum() > 0
    plain = tiny_tokenizer(n_q=2, bins=64)
    with pytest.raises(ValueError, match="restore_scale"):
        plain.load_seanet(vae)


def test_the_tokenizer_config_takes_the_pretrained_seanet_whole():
    """speech-encodec-2.yaml starts from speech-encodec-pre.yaml's sigma-VAE: the same SEANet."""
    import latentlm

    configs = Path(latentlm.__file__).parent / "configs"
    pre = load_yaml_config(configs / "speech-encodec-pre.yaml", CodecTrainConfig)
    tok = load_yaml_config(configs / "speech-encodec-2.yaml", CodecTrainConfig)
    assert tok.init_from.endswith("speech-encodec-pre/final")
    EncodecTokenizer(tok.codec_config()).load_seanet(AudioSigmaVAE(pre.codec_config()))  # no mismatch


@pytest.mark.parametrize("split", ["val", "test"])
def test_cli_eval_codec_measures_the_split_it_is_given(tmp_path, monkeypatch, capsys, split):
    import latentlm.evaluation.audio_codec as audio_eval
    from latentlm.cli.main import main

    asked = []
    monkeypatch.setattr(audio_eval, "eval_audio_codec", lambda codec, n, s: asked.append(("dist", n, s)) or {"mel": 1})
    monkeypatch.setattr(audio_eval, "round_trip_intelligibility", lambda codec, n, s: asked.append(("asr", n, s)) or {})
    folder = save_codec(tiny_vae(), tmp_path / "vae")
    main(["eval", "codec", "--modality", "audio", "--codec", str(folder), "--n", "3", "--split", split])
    assert asked == [("dist", 3, split), ("asr", 3, split)] and json.loads(capsys.readouterr().out) == {"mel": 1}


def test_a_larger_speech_cache_starts_from_a_smaller_one(tmp_path, monkeypatch):
    """SpeechClips.load_or_make(n): utterance i is the same whatever n, so `<stem>_<m>.npz` beside the cache
    gives the first m and only the rest are synthesised; the result equals making all n afresh."""
    import numpy as np

    import latentlm.data.speech as speech
    from latentlm.training.codec import SpeechClips

    made = []

    def fake_item(split, i):
        made.append(i)
        return "words", None, np.sin(np.arange(100 + 10 * i) * (i + 1) / 7).astype(np.float32) * 0.5

    monkeypatch.setattr(speech, "speech_item", fake_item)
    small = SpeechClips.load_or_make(3, tmp_path / "speech_train_3.npz", progress=False)
    (tmp_path / "speech_train_2.npz").write_bytes(b"not a cache")  # unreadable: passed over
    made.clear()
    big = SpeechClips.load_or_make(5, tmp_path / "speech_train_5.npz", progress=False)
    assert made == [3, 4] and len(big) == 5
    assert all(torch.equal(big.wave(i), small.wave(i)) for i in range(3))
    made.clear()
    fresh = SpeechClips.load_or_make(5, tmp_path / "other" / "speech_train_5.npz", progress=False)
    assert made == list(range(5)) and all(torch.equal(big.wave(i), fresh.wave(i)) for i in range(5))
    made.clear()
    again = SpeechClips.load_or_make(5, tmp_path / "speech_train_5.npz", progress=False)
    assert made == [] and torch.equal(again.audio, big.audio)
