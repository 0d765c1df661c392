"""Codecs: continuous sigma-VAE latents (images, audio) and discrete neural-codec tokens (audio)."""
from latentlm.codecs.audio_sigma_vae import AudioSigmaVAE, AudioSigmaVAEConfig
from latentlm.codecs.encodec_tokenizer import EncodecTokenizer, EncodecTokenizerConfig
from latentlm.codecs.sigma_vae import ImageSigmaVAE, SigmaVAEConfig

CODECS = {
    "image_sigma_vae": (ImageSigmaVAE, SigmaVAEConfig),
    "audio_sigma_vae": (AudioSigmaVAE, AudioSigmaVAEConfig),
    "encodec_tokenizer": (EncodecTokenizer, EncodecTokenizerConfig),
}

__all__ = [
    "CODECS", "AudioSigmaVAE", "AudioSigmaVAEConfig", "EncodecTokenizer", "EncodecTokenizerConfig", "ImageSigmaVAE",
    "SigmaVAEConfig",
]
