"""Configuration of a LatentLM model, saved as `config.json` in its checkpoint."""
from __future__ import annotations

from pydantic import BaseModel, Field

from latentlm.backbones import BackboneConfig
from latentlm.diffusion_head import DiffusionHeadConfig


class ModelConfig(BaseModel):
    vocab_size: int = Field(..., ge=8)
    latent_dim: int = Field(16, ge=1)
    image_tokens: int = Field(64, ge=1)  # latents per image span (fixed by the codec's resolution)
    max_slots: int = Field(64, ge=1)  # learned embeddings telling a position which latent of a span comes next
    backbone: BackboneConfig = BackboneConfig()
    head: DiffusionHeadConfig = DiffusionHeadConfig()
    cfg_dropout: float = Field(0.1, ge=0, lt=1)  # probability of dropping the text condition in training
    text_loss_weight: float = Field(0.1, ge=0)
    codecs: dict[str, str] = Field(default_factory=lambda: {"image": "image_codec"})  # modality -> sub-folder
