"""Configuration of a LatentLM model, saved as `config.json` in its checkpoint."""
from __future__ import annotations

from pydantic import BaseModel, Field

from latentlm.backbones import BackboneConfig
from latentlm.data.tts import PromptForm
from latentlm.diffusion_head import DiffusionHeadConfig


class ModelConfig(BaseModel):
    vocab_size: int = Field(..., ge=8)
    latent_dim: int = Field(16, ge=1)  # width of an image latent
    audio_latent_dim: int | None = Field(None, ge=1)  # width of an audio latent; None: the model cannot speak
    reads: bool | None = None  # trained to read pictures (captions, questions, grounding); None: not recorded
    image_tokens: int = Field(64, ge=1)  # latents per image span (fixed by the codec's resolution)
    max_slots: int = Field(64, ge=1)  # learned embeddings telling a position which latent of a span comes next
    backbone: BackboneConfig = BackboneConfig()
    head: DiffusionHeadConfig = DiffusionHeadConfig()
    cfg_dropout: float = Field(0.1, ge=0, lt=1)  # probability of dropping the text condition in training
    text_loss_weight: float = Field(0.1, ge=0)
    codecs: dict[str, str] = Field(default_factory=lambda: {"image": "image_codec"})  # modality -> sub-folder
    # Speech: a span ends when the text head's p(</audio>) passes this; at most this many latents per
    # text token (the hard cap of a generated utterance).
    audio_stop_threshold: float = Field(0.5, gt=0, lt=1)
    max_audio_per_token: int = Field(16, ge=1)
    max_speech_tokens: int = Field(96, ge=1)  # longest text spoken at once (training texts are under half of it)
    voice_prompt_form: PromptForm = "prefix"  # as trained (data.tts.spoken_example)
    # Training only: the largest std (normalised units) of Gaussian noise on generated speech latents as the
    # backbone reads them (targets stay as they are); each row draws its std uniformly below it (LatentLM.loss).
    audio_input_noise: float = Field(0.0, ge=0)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "audio") if self.audio_latent_dim else ("image",)

    def width(self, modality: str) -> int:
        """Latent width of a modality."""
        if modality == "audio" and self.audio_latent_dim:
            return self.audio_latent_dim
        if modality == "image":
            return self.latent_dim
        raise ValueError(f"this model has no {modality} latents; it knows {list(self.modalities)}")

    @property
    def latent_width(self) -> int:
        """Width of a batch's latent tensor: the widest modality (narrower ones are zero-padded)."""
        return max(self.width(m) for m in self.modalities)
