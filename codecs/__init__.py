"""Codecs: continuous sigma-VAE latents (and, later, discrete neural-codec tokens)."""
from latentlm.codecs.sigma_vae import ImageSigmaVAE, SigmaVAEConfig

CODECS = {"image_sigma_vae": (ImageSigmaVAE, SigmaVAEConfig)}

__all__ = ["CODECS", "ImageSigmaVAE", "SigmaVAEConfig"]
