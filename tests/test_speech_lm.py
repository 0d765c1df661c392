"""Speech in the LatentLM: audio spans in the sequence format, the per-modality heads, the end-of-speech
decision, voice prompts, generation and the text-to-speech workflow (tiny random models)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from latentlm.codecs import AudioSigmaVAE, AudioSigmaVAEConfig, ImageSigmaVAE, SigmaVAEConfig
from latentlm.data.tts import SpeechCorpus, tts_sequence
from latentlm.errors import LatentLMError, PromptError
from latentlm.model import LatentLM
from latentlm.model_config import ModelConfig
from latentlm.sequence import MODALITY_INDEX, Latent, Text, collate, frame, shard_batch
from latentlm.speech import VoicePrompt, generate_speech, sample_speech_latents, voice_prompt
from latentlm.tokenizer import TextTokenizer

IMAGE_DIM, AUDIO_DIM = 8, 12


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path) -> TextTokenizer:
    return TextTokenizer(tiny_tokenizer_path)


def speech_model(tok: TextTokenizer, seed: int = 0, **config) -> LatentLM:
    torch.manual_seed(seed)
    image = ImageSigmaVAE(SigmaVAEConfig(latent_dim=IMAGE_DIM, block_out_channels=(16, 16, 16, 16), norm_num_groups=8))
    audio = AudioSigmaVAE(AudioSigmaVAEConfig(latent_dim=AUDIO_DIM, ratios=(4, 4), n_filters=4))  # hop 16
    cfg = ModelConfig(vocab_size=tok.vocab_size, latent_dim=IMAGE_DIM, audio_latent_dim=AUDIO_DIM,
                      backbone={"d_model": 32, "n_layers": 2, "n_heads": 4}, head={"width": 32, "depth": 1},
                      codecs={"image": "image_codec", "audio": "audio_codec"}, **config)
    return LatentLM(cfg, tok, {"image": image, "audio": audio}).eval()


def test_collate_marks_modalities_pads_narrow_latents_and_labels_the_end(tok):
    z_img, z_aud = torch.randn(3, IMAGE_DIM), torch.randn(4, AUDIO_DIM)
    seq = [Text([tok.bos_id, 5]), *frame("image", z_img, tok.token_id), *frame("audio", z_aud, tok.token_id)]
    b = collate([seq], AUDIO_DIM, tok.pad_id)
    # positions: <s> 5 <image> i i i </image> <audio> a a a a </audio>
    assert b.modality[0].tolist() == [-1, -1, -1, 0, 0, 0, -1, -1, 1, 1, 1, 1, -1]
    assert torch.equal(b.latents[0, 3:6, :IMAGE_DIM], z_img) and b.latents[0, 3:6, IMAGE_DIM:].abs().sum() == 0
    assert torch.equal(b.latents[0, 8:12], z_aud)
    # from <audio> to the last latent: 0 = another latent follows, 1 = </audio> follows
    assert b.audio_stop[0].tolist() == [-1] * 7 + [0, 0, 0, 0, 1, -1]
    # image spans keep their slots; audio positions carry none
    assert b.slot[0, 2:6].tolist() == [0, 1, 2, -1] and (b.slot[0, 7:] == -1).all()


def test_a_voice_prompt_and_its_continuation_form_one_span(tok):
    prompt, target = torch.randn(2, AUDIO_DIM), torch.randn(3, AUDIO_DIM)
    seq = [Text([tok.bos_id, tok.token_id("<audio>")]), Latent("audio", prompt, target=False),
           Latent("audio", target), Text([tok.token_id("</audio>")])]
    b = collate([seq], AUDIO_DIM, tok.pad_id)
    assert b.audio_stop[0].tolist() == [-1, 0, 0, 0, 0, 0, 1, -1]
    assert b.latent_target[0].tolist() == [False, False, False, False, True, True, True, False]


def grad_size(p: torch.Tensor) -> float:
    return 0.0 if p.grad is None else p.grad.abs().sum().item()


def test_each_modality_has_its_own_projection_and_head(tok):
    model = speech_model(tok)
    seq = [Text([tok.bos_id, 7, tok.token_id("<audio>")]), Latent("audio", torch.randn(5, AUDIO_DIM)),
           Text([tok.token_id("</audio>"), tok.eos_id])]
    batch = collate([seq], AUDIO_DIM, tok.pad_id)
    model.train()
    loss, logs = model.loss(batch)
    loss.backward()
    assert logs["diffusion"] == 0 and logs["diffusion_audio"] > 0
    assert grad_size(model.audio_in.weight) > 0 and grad_size(model.latent_in.weight) == 0
    assert grad_size(model.audio_diffusion.net.out.weight) > 0 and grad_size(model.diffusion.net.out.weight) == 0


def test_the_continue_loss_is_minus_log_one_minus_p_end(tok):
    model = speech_model(tok)
    h = torch.randn(6, 32)
    p_end = model.stop_probability(h)
    want = -torch.log1p(-p_end.double()).sum()  # summed: the loss divides by the global count of such positions
    assert torch.allclose(model._continue_loss(h).double(), want, rtol=1e-4)


def test_image_only_models_embed_as_before(tok):
    """The modality-aware embedding gives the image path's old numbers exactly."""
    model = speech_model(tok)
    seq = [Text([tok.bos_id, 9, tok.token_id("<image>")]), Latent("image", torch.randn(4, IMAGE_DIM)),
           Text([tok.token_id("</image>")])]
    b = collate([seq], AUDIO_DIM, tok.pad_id)
    got = model.embed_inputs(b.ids, b.latents, b.is_latent, b.slot, b.modality)
    old = torch.where(b.is_latent[..., None], model.latent_in(b.latents[..., :IMAGE_DIM]), model.embed(b.ids))
    old = old + model.slot_embed(b.slot.clamp(0)) * (b.slot >= 0)[..., None]
    assert torch.equal(got, old)


def test_generation_stops_when_the_text_head_says_so(tok, monkeypatch):
    model = speech_model(tok)
    calls = []

    def stop_at_third(h):
        calls.append(1)
        return torch.full(h.shape[:-1], 1.0 if len(calls) >= 3 else 0.0)

    monkeypatch.setattr(model, "stop_probability", stop_at_third)
    z = sample_speech_latents(model, ["a red circle"], steps=2, generator=torch.Generator().manual_seed(0))
    assert len(z) == 1 and z[0].shape == (3, AUDIO_DIM)


def test_generation_is_capped_at_16_frames_per_text_token(tok, monkeypatch):
    model = speech_model(tok)
    monkeypatch.setattr(model, "stop_probability", lambda h: torch.zeros(h.shape[:-1]))
    texts = ["a red circle", "a small blue square above a green triangle"]
    z = sample_speech_latents(model, texts, steps=1, generator=torch.Generator().manual_seed(0))
    assert [len(x) for x in z] == [16 * len(tok.encode(t)) for t in texts]


def test_speech_is_deterministic_for_a_seed(tok):
    model = speech_model(tok, max_audio_per_token=2)
    a = generate_speech(model, ["a blue square"], steps=2, seed=4)[0]
    b = generate_speech(model, ["a blue square"], steps=2, seed=4)[0]
    c = generate_speech(model, ["a blue square"], steps=2, seed=5)[0]
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) % 16 == 0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_voice_prompt_enters_both_streams(tok, monkeypatch):
    model = speech_model(tok, max_audio_per_token=1)
    wav = np.sin(np.arange(160) / 3).astype(np.float32)
    prompt = voice_prompt(model, wav, 16_000, "a red circle")
    assert prompt.latents.shape == (10, AUDIO_DIM)
    seen = {}
    real_forward = model.forward

    def spy(batch, state=None):
        seen.setdefault("batch", batch)
        return real_forward(batch, state)

    monkeypatch.setattr(model, "forward", spy)
    sample_speech_latents(model, ["a blue square"], prompt, steps=1, generator=torch.Generator().manual_seed(0))
    b = seen["batch"]
    assert b.ids.shape[0] == 2 and (b.modality == MODALITY_INDEX["audio"]).sum(1).tolist() == [10, 10]
    n_text = len(tok.encode("a red circle")) + len(tok.encode("a blue square"))
    assert (b.valid[0] & ~b.is_latent[0]).sum() == n_text + 2  # <s> transcript text <audio>
    assert (b.valid[1] & ~b.is_latent[1]).sum() == 2  # <s> <audio>: no words in the unconditional stream


def test_user_errors_are_clear(tok):
    model = speech_model(tok)
    with pytest.raises(PromptError, match="empty"):
        generate_speech(model, ["  "])
    with pytest.raises(PromptError, match="split it into sentences"):
        generate_speech(model, ["a red circle " * 60])
    with pytest.raises(PromptError, match="voice_text"):
        voice_prompt(model, np.zeros(320, np.float32), 16_000, "")
    with pytest.raises(PromptError, match="mono"):
        voice_prompt(model, np.zeros((2, 320), np.float32), 16_000, "a red circle")
    image_only = LatentLM(ModelConfig(vocab_size=tok.vocab_size, latent_dim=IMAGE_DIM), tok)
    with pytest.raises(PromptError, match="cannot speak"):
        generate_speech(image_only, ["a red circle"])


def test_tts_examples_prompt_with_another_utterance_of_the_same_voice(tok):
    means = [torch.randn(n, AUDIO_DIM) for n in (3, 4, 2, 5)]
    corpus = SpeechCorpus(["a red circle", "a blue square", "a green circle", "a red square"],
                          ["amy", "amy", "gwen", "gwen"], means)
    corpus.index_prompts(max_frames=4, held_out={"gwen"})
    assert corpus.prompt_pool == {"amy": [0, 1]}
    target = torch.randn(3, AUDIO_DIM)
    seq = tts_sequence(corpus, 0, target, lambda z: z, tok, random.Random(0), cfg_dropout=0, voice_prompt=1.0)
    ids = seq[0].ids
    assert ids == [tok.bos_id] + tok.encode("a blue square") + tok.encode("a red circle") + [tok.token_id("<audio>")]
    assert torch.equal(seq[1].z, means[1]) and not seq[1].target and seq[2].target
    # held-out voices never prompt, and dropping the condition drops both texts
    seq = tts_sequence(corpus, 2, target, lambda z: z, tok, random.Random(0), cfg_dropout=1.0, voice_prompt=1.0)
    assert seq[0].ids == [tok.bos_id, tok.token_id("<audio>")] and len(seq) == 3


def test_a_demonstration_prompt_is_a_whole_spoken_example_before_the_words_to_say(tok):
    """The "demonstration" form: `<s> PROMPT-TEXT <audio> p </audio> TEXT <audio> z </audio> </s>`; the prompt's
    span ends (its last latent learns `</audio>`), a dropped condition drops only the words to say, and
    generation builds the same streams from the model's recorded form."""
    means = [torch.randn(n, AUDIO_DIM) for n in (3, 4)]
    corpus = SpeechCorpus(["a red circle", "a blue square"], ["amy", "amy"], means)
    corpus.index_prompts(max_frames=4, held_out=set())
    target = torch.randn(3, AUDIO_DIM)
    audio, end = tok.token_id("<audio>"), tok.token_id("</audio>")
    seq = tts_sequence(corpus, 0, target, lambda z: z, tok, random.Random(0), 0.0, 1.0, form="demonstration")
    assert seq[0].ids == [tok.bos_id, *tok.encode("a blue square"), audio] and torch.equal(seq[1].z, means[1])
    assert seq[2].ids == [end, *tok.encode("a red circle"), audio] and seq[3].target and seq[4].ids == [end, tok.eos_id]
    b = collate([seq], AUDIO_DIM, tok.pad_id)
    k = len(seq[0].ids)  # the prompt's 4 latents follow; then </audio> TEXT <audio> and the target's 3
    assert b.audio_stop[0, k - 1:k + 4].tolist() == [0, 0, 0, 0, 1]
    assert b.latent_target[0].sum() == 3
    dropped = tts_sequence(corpus, 0, target, lambda z: z, tok, random.Random(0), 1.0, 1.0, form="demonstration")
    assert dropped[0].ids == seq[0].ids and dropped[2].ids == [end, audio]

    from latentlm.speech import _prefill

    model = speech_model(tok, voice_prompt_form="demonstration", max_audio_per_token=1)
    voice = VoicePrompt(torch.randn(4, AUDIO_DIM), "a blue square")
    streams = _prefill(model, [tok.encode("a red circle")], voice, guided=True)
    cond, uncond = (row[row != tok.pad_id].tolist() for row in streams.ids)
    assert cond[-len(tok.encode("a red circle")) - 2:] == [end, *tok.encode("a red circle"), audio]
    assert uncond[-2:] == [end, audio] and tok.encode("a blue square")[0] in uncond
    z = sample_speech_latents(model, ["a red circle"], voice, steps=1, generator=torch.Generator().manual_seed(0))
    assert z[0].shape == (len(z[0]), AUDIO_DIM) and 1 <= len(z[0]) <= len(tok.encode("a red circle"))


def test_the_text_to_speech_workflow(tok, tmp_path):
    import soundfile

    from latentlm.workflows.session import Session

    model = speech_model(tok, max_audio_per_token=1)
    session = Session(model)
    r = session.call("text-to-speech", text="a red circle", seed=1)
    assert r.sample_rate == 16_000 and r.audio.ndim == 1 and len(r.audio) > 0
    ref = tmp_path / "ref.wav"
    soundfile.write(ref, np.sin(np.arange(800) / 5).astype(np.float32) * 0.3, 16_000)
    with pytest.raises(PromptError, match="voice_text"):
        session.call("text-to-speech", text="a red circle", voice=str(ref))
    (tmp_path / "ref.txt").write_text("a blue square")
    voiced = session.call("text-to-speech", text="a red circle", voice=str(ref), seed=1)
    assert voiced.audio.ndim == 1
    with pytest.raises(LatentLMError, match="no such sound file"):
        session.call("text-to-speech", text="a red circle", voice=str(tmp_path / "missing.wav"))
    (tmp_path / "bad.wav").write_text("not a sound")
    with pytest.raises(LatentLMError, match="not a sound file"):
        session.call("text-to-speech", text="a red circle", voice=str(tmp_path / "bad.wav"), voice_text="hi")


def tiny_audio_codec_dir(tmp_path):
    """A saved untrained speech sigma-VAE (12.5 Hz x AUDIO_DIM, 2 filters): a codec that speech stages can load."""
    from latentlm.checkpoint import save_codec

    torch.manual_seed(0)
    codec = AudioSigmaVAE(AudioSigmaVAEConfig(latent_dim=AUDIO_DIM, ratios=(8, 8, 5, 4), n_filters=2))
    return save_codec(codec, tmp_path / "audio_codec")


def test_a_speech_stage_warm_starts_from_a_model_that_only_draws(tmp_path, tiny_tokenizer_path, tiny_codec_dir,
                                                                 tiny_model_dir):
    """init_from an image-only model: its weights carry over, the speech parts start fresh, tts trains."""
    pytest.importorskip("espeakng_loader")
    from latentlm.training.lm import train_lm

    audio_dir = tiny_audio_codec_dir(tmp_path)
    config = tmp_path / "speech.yaml"
    config.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
audio_codec: {audio_dir}
init_from: {tiny_model_dir}
backbone: {{d_model: 64, n_layers: 2, n_heads: 4}}
head: {{width: 64, depth: 2, batch_mul: 2}}
data: {{n_train: 128, tasks: {{t2i: 0.3, tts: 0.7}}, speech: {{n_train: 6, voice_prompt: 0.5, prompt_form: demonstration}}}}
train: {{steps: 3, batch_size: 4, lr: 0.001, warmup_steps: 1, log_every: 1, save_every: 10, seed: 0}}
""")
    final = train_lm(config, tmp_path / "run", progress=False)
    model = LatentLM.from_pretrained(final)
    before = LatentLM.from_pretrained(tiny_model_dir)
    assert model.config.audio_latent_dim == AUDIO_DIM and "audio" in model.codecs
    assert model.config.voice_prompt_form == "demonstration"  # recorded for generation
    logs = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any('"diffusion_audio": 0.' in line or '"diffusion_audio": 1.' in line for line in logs)
    assert not torch.equal(model.embed.weight[:10], before.embed.weight[:10])  # trained on from the old weights
    assert (tmp_path / "run" / "speech_means_6.pt").is_file()
    z = sample_speech_latents(model, ["a red circle"], steps=1, generator=torch.Generator().manual_seed(0))
    assert z[0].shape[1] == AUDIO_DIM and 1 <= len(z[0]) <= 16 * len(model.tokenizer.encode("a red circle"))


def test_tts_needs_an_audio_codec(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    from latentlm.errors import ConfigError
    from latentlm.training.lm import train_lm

    config = tmp_path / "bad.yaml"
    config.write_text(f"tokenizer: {tiny_tokenizer_path}\ncodec: {tiny_codec_dir}\ndata: {{tasks: {{tts: 1.0}}}}\n")
    with pytest.raises(ConfigError, match="audio codec"):
        train_lm(config, tmp_path / "run", progress=False)


@pytest.fixture(scope="module")
def speech_model_dir(tok, tmp_path_factory):
    return speech_model(tok, max_audio_per_token=1).save_pretrained(tmp_path_factory.mktemp("speech") / "model")


def test_speak_and_save(speech_model_dir, tmp_path):
    import soundfile

    from latentlm.workflows.session import Session

    r = Session(str(speech_model_dir)).speak("a red circle", seed=3, steps=2)
    again = Session(str(speech_model_dir)).speak("a red circle", seed=3, steps=2)
    assert np.array_equal(r.audio, again.audio) and r.steps[0]["seed"] == 3
    manifest = r.save(tmp_path / "out")
    wav, rate = soundfile.read(tmp_path / "out" / "audio.wav")
    assert rate == 16_000 and len(wav) == len(r.audio) and '"audio": "audio.wav"' in manifest.read_text()


def test_cli_speaks_to_a_wav_and_refuses_bad_input_in_one_line(speech_model_dir, tmp_path, capsys):
    import soundfile

    from latentlm.cli.main import main

    out = tmp_path / "said.wav"
    main(["generate", "--modality", "audio", "--prompt", "a red circle", "--model", str(speech_model_dir),
          "--steps", "2", "-o", str(out)])
    assert soundfile.info(str(out)).samplerate == 16_000
    capsys.readouterr()
    for args, words in ((["--prompt", "a red circle", "-o", str(tmp_path / "x.mp3")], "unknown sound format"),
                        (["--prompt", "a red circle", "--voice", str(tmp_path / "missing.wav"), "-o", str(out)],
                         "no such sound file"),
                        (["--prompt", "  ", "-o", str(out)], "empty")):
        with pytest.raises(SystemExit) as stop:
            main(["generate", "--modality", "audio", "--model", str(speech_model_dir), *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_describe_and_speak_speaks_the_caption(tok, monkeypatch):
    from PIL import Image

    import latentlm.workflows.caption as caption_workflow
    from latentlm.workflows.session import Session

    session = Session(speech_model(tok, max_audio_per_token=1))
    picture = Image.new("RGB", (64, 64), "white")
    said = []
    monkeypatch.setattr(caption_workflow, "caption_pictures", lambda model, pixels, grounded: said or ["a red circle"])
    r = session.call("describe-and-speak", image=picture, seed=2)
    spoken = session.speak("a red circle", seed=2)
    assert r.text == "a red circle" and np.array_equal(r.audio, spoken.audio) and r.sample_rate == 16_000
    said.append("  ")  # a caption with no words: a clear error, not silence
    with pytest.raises(LatentLMError, match="text: is empty"):
        session.call("describe-and-speak", image=picture)


def test_eval_tts_reports_every_measure(tok):
    """The whole `latentlm eval tts` loop on a random tiny model (the numbers mean nothing; the keys and
    ranges do): espeak-ng references, voice prompts, recognisers, MCD, F0, timings."""
    pytest.importorskip("espeakng_loader")
    pytest.importorskip("pocketsphinx")
    from latentlm.evaluation.tts import eval_tts

    model = speech_model(tok, max_audio_per_token=1)
    r = eval_tts(model, n=3, split="test", steps=1, progress=False)
    assert r["n"] == 3 and 0 <= r["wer_reference"] and r["mcd_db"] > 0 and r["real_time_factor"] > 0
    assert 0 <= r["duration_within_20pct"] <= 1 and r["ar_steps_per_second"] == pytest.approx(16_000 / 16, rel=0.01)
    assert r["head_calls_per_second"] == pytest.approx(r["ar_steps_per_second"])  # one solver step per latent


def test_a_voice_prompt_never_says_the_words_to_be_spoken():
    """Val items were once prompted with their own utterance (the first short val utterance of the voice is
    often the item itself): the prompt must be another sentence of the same voice."""
    pytest.importorskip("espeakng_loader")
    from latentlm.data.speech import speech_item
    from latentlm.evaluation.tts import prompt_recording

    clashes = 0
    for i in range(12):
        text, voice, _ = speech_item("val", i)
        first, _ = prompt_recording(voice.name)
        clashes += first == text
        said, wav = prompt_recording(voice.name, not_text=text)
        assert said != text and 0 < len(wav) <= 4 * 16_000
    assert clashes > 0  # the case arises in the first val items


SPEECH_FILE = """name: say-twice
inputs:
  text: {type: string, default: "a red circle"}
  voice: {type: audio, default: ref.wav}
steps:
  - id: say
    uses: text-to-speech
    with: {text: "${{ inputs.text }}", voice: "${{ inputs.voice }}", steps: 2, seed: 1}
  - id: again
    uses: text-to-speech
    with: {text: "a blue square", voice: "${{ steps.say.outputs.audio }}", voice_text: "${{ inputs.text }}",
           steps: 2, seed: 2}
outputs:
  second: "${{ steps.again.outputs.audio }}"
  rate: "${{ steps.again.outputs.sample_rate }}"
"""


def _reference(folder, words: str = "a blue square"):
    import soundfile

    soundfile.write(folder / "ref.wav", np.sin(np.arange(800) / 5).astype(np.float32) * 0.3, 16_000)
    (folder / "ref.txt").write_text(words)


def test_a_workflow_file_speaks_to_wav_files_and_passes_speech_on_as_a_voice(speech_model_dir, tmp_path):
    """Speech outputs are WAV files in the manifest; speech passed to a later step's voice is a recording
    (saved under steps/); an audio input is a sound file relative to the workflow file, its words beside it."""
    import soundfile

    from latentlm.workflows.session import Session
    from latentlm.workflows.workflow_runner import run_workflow_file

    _reference(tmp_path)
    (tmp_path / "say.yaml").write_text(SPEECH_FILE)
    outcome = run_workflow_file(tmp_path / "say.yaml", model=str(speech_model_dir), out=tmp_path / "out")
    record = outcome.manifest["outputs"]["second"]
    assert record["type"] == "audio" and record["file"] == "second.wav" and record["sample_rate"] == 16_000
    wave, rate = soundfile.read(str(tmp_path / "out" / "second.wav"))
    assert rate == 16_000 and len(wave) == round(record["seconds"] * rate)
    assert outcome.manifest["files"]["second.wav"] == record["sha256"]
    first = outcome.manifest["steps"][1]["inputs"]["voice"]
    assert first == "steps/say.audio.wav" and (tmp_path / "out" / first).is_file()
    assert outcome.manifest["steps"][0]["inputs"]["voice"] == str(tmp_path / "ref.wav")
    # the speech steps' own sampling settings, defaults included (the manifest's top-level block is the Session's)
    assert outcome.manifest["steps"][0]["sampling"] == {"steps": 2, "cfg_scale": 2.0, "temperature": 1.0}
    # The same calls through a Session give the same sound.
    session = Session(str(speech_model_dir))
    said = session.call("text-to-speech", text="a red circle", voice=str(tmp_path / "ref.wav"), steps=2, seed=1)
    again = session.call("text-to-speech", text="a blue square", voice=(said.audio, said.sample_rate),
                         voice_text="a red circle", steps=2, seed=2)
    assert np.array_equal(outcome.values["second"].wave, again.audio)


def test_workflow_files_check_sound_paths_and_keep_speech_out_of_text(tmp_path):
    from latentlm.workflows.workflow_file import check_workflow_file
    from latentlm.workflows.workflow_runner import WorkflowRunError, resolve_inputs, run_workflow_file

    (tmp_path / "say.yaml").write_text(SPEECH_FILE)
    _, errs = check_workflow_file(tmp_path / "say.yaml")
    assert [(e.line, e.where) for e in errs] == [(4, "inputs.voice.default")]
    assert "sound file 'ref.wav' does not exist" in errs[0].what
    literal = SPEECH_FILE.replace('"${{ inputs.voice }}"', "other.wav")
    (tmp_path / "literal.yaml").write_text(literal.replace("default: ref.wav", "default: other.wav"))
    _, errs = check_workflow_file(tmp_path / "literal.yaml")
    assert [e.where for e in errs] == ["inputs.voice.default", "steps.0.with.voice"]
    inside = SPEECH_FILE.replace('second: "${{ steps.again.outputs.audio }}"',
                                 'second: "said ${{ steps.again.outputs.audio }}"')
    (tmp_path / "inside.yaml").write_text(inside)
    _, errs = check_workflow_file(tmp_path / "inside.yaml")
    assert any("is a recording: pass it as the whole value" in e.what for e in errs), errs
    _reference(tmp_path)
    (tmp_path / "bad.wav").write_text("not a sound")
    from latentlm.workflows.workflow_file import load_workflow_file

    wf = load_workflow_file(tmp_path / "say.yaml")
    with pytest.raises(WorkflowRunError, match="--set voice: .*bad.wav is not a sound file"):
        resolve_inputs(wf, {"voice": str(tmp_path / "bad.wav")})
    with pytest.raises(WorkflowRunError, match="--set voice=: input 'voice' is a recording"):
        resolve_inputs(wf, {"voice": " "})
    (tmp_path / "ref.wav").write_text("broken since the check")
    with pytest.raises(WorkflowRunError, match="input 'voice' \\(default\\): .*not a sound file"):
        run_workflow_file(tmp_path / "say.yaml", model="shapes-tiny", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0])
def test_target_noise_scales_the_latent_noise_of_tts_examples(tmp_path, tiny_tokenizer_path, tiny_codec_dir, noise):
    """data.speech.target_noise: 0 trains on the posterior means, 1 on z = mu + sigma * eps, in between on
    mu + noise * sigma * eps with the same draw."""
    pytest.importorskip("espeakng_loader")
    import random

    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LatentLMTask, LMTrainConfig

    audio_dir = tiny_audio_codec_dir(tmp_path)
    path = tmp_path / "speech.yaml"
    path.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
audio_codec: {audio_dir}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 4, tasks: {{tts: 1.0}}, speech: {{n_train: 3, voice_prompt: 0.0, target_noise: {noise}, input_noise: {noise}}}}}
""")
    task = LatentLMTask(load_yaml_config(path, LMTrainConfig), tmp_path)
    codec = task.audio_codec
    target = next(p for p in task._utterance(1, random.Random(0), torch.Generator().manual_seed(5)) if
                  getattr(p, "target", False)).z
    mu = task.speech.means[1][None]
    drawn = codec.perturb(mu, torch.Generator().manual_seed(5))
    assert torch.allclose(target, codec.normalize(mu + noise * (drawn - mu))[0], atol=1e-6)
    assert task.model.config.audio_input_noise == noise  # data.speech.input_noise reaches the model's loss


def test_audio_input_noise_perturbs_only_what_the_model_reads_of_generated_speech(tok):
    """audio_input_noise: generated speech latents are read with noise (a std per row below the maximum, from
    the row's seed) while the targets, the voice prompt and every other position are read as they are."""
    prompt, target = torch.randn(2, AUDIO_DIM), torch.randn(4, AUDIO_DIM)
    seq = [Text([tok.bos_id, 7, tok.token_id("<audio>")]), Latent("audio", prompt, target=False),
           Latent("audio", target), Text([tok.token_id("</audio>"), tok.eos_id])]
    batch = shard_batch([seq, seq], 0, 1, 3, ("image", "audio"), AUDIO_DIM, tok.pad_id)
    assert speech_model(tok)._noisy_audio_inputs(batch) is None  # the default: inputs are the targets
    model = speech_model(tok, audio_input_noise=2.0)
    noisy = model._noisy_audio_inputs(batch)
    moved = (noisy != batch.latents).any(-1)  # [B, T]
    assert torch.equal(moved, batch.latent_target & (batch.modality == 1))
    assert not torch.equal(noisy[0], noisy[1])  # each row its own draw
    assert torch.equal(noisy, model._noisy_audio_inputs(batch))  # from the rows' seeds
    model.train()
    loss, _ = model.loss(batch)
    reference, _ = speech_model(tok).train().loss(batch)
    assert loss.item() != reference.item()  # the loss reads the noisy inputs ...
    h, _ = model(batch, latents=noisy)
    assert torch.equal(h, model(batch, latents=noisy)[0]) and not torch.equal(h, model(batch)[0])


def test_teacher_forcing_samples_each_frame_from_the_true_frames_before_it(tok):
    """evaluation.speech_drift: frame t is drawn from the history of true frames < t (a change at frame k moves
    the frames after it only), the same for a seed, and the words (with guidance or without) change it."""
    from latentlm.evaluation.speech_drift import teacher_forced_latents

    model = speech_model(tok)
    with torch.no_grad():  # the head's zero-initialised modulations would ignore the condition altogether
        for p in model.audio_diffusion.parameters():
            p.normal_(0, 0.2)
    truth = torch.randn(6, AUDIO_DIM)
    draw = lambda z, **kw: teacher_forced_latents(model, "a red circle", z, steps=3,  # noqa: E731
                                                  generator=torch.Generator().manual_seed(1), **kw)
    base = draw(truth)
    assert base.shape == (6, AUDIO_DIM) and torch.equal(base, draw(truth))
    moved = truth.clone()
    moved[3] += 1.0
    out = draw(moved)
    assert torch.equal(out[:4], base[:4]) and not torch.allclose(out[4:], base[4:])
    assert not torch.allclose(draw(truth, with_text=False), base)
    assert not torch.allclose(draw(truth, cfg_scale=3.0), base)


def test_a_second_model_speaks_while_the_first_draws_and_reads(tok, speech_model_dir, tmp_path, monkeypatch, capsys):
    """Session(speech_model=...): the text-to-speech steps run on the second model (loaded on first use), the
    other workflows on the first; workflow files record both; `latentlm run|chat --speech-model` pass it on."""
    from PIL import Image

    import latentlm.workflows.caption as caption_workflow
    from latentlm.cli.main import main
    from latentlm.workflows.session import Session
    from latentlm.workflows.workflow_runner import run_workflow_file

    torch.manual_seed(0)
    mute = LatentLM(ModelConfig(vocab_size=tok.vocab_size, latent_dim=IMAGE_DIM, head={"width": 32, "depth": 1},
                                backbone={"d_model": 32, "n_layers": 2, "n_heads": 4}), tok,
                    {"image": ImageSigmaVAE(SigmaVAEConfig(latent_dim=IMAGE_DIM, block_out_channels=(16, 16, 16, 16),
                                                           norm_num_groups=8))}).eval()
    with pytest.raises(PromptError, match="cannot speak"):
        Session(mute).speak("a red circle", steps=2)
    with pytest.raises(LatentLMError, match="speech_model must be"):
        Session(mute, speech_model=3)
    alone = Session(str(speech_model_dir)).speak("a red circle", seed=3, steps=2)
    session = Session(mute, speech_model=str(speech_model_dir))
    assert np.array_equal(session.speak("a red circle", seed=3, steps=2).audio, alone.audio)
    assert session.model is mute and session.speaker is not mute

    captioned_by = []
    monkeypatch.setattr(caption_workflow, "caption_pictures",
                        lambda model, pixels, grounded: captioned_by.append(model) or ["a red circle"])
    r = session.call("describe-and-speak", image=Image.new("RGB", (64, 64), "white"), seed=2)
    assert captioned_by == [mute] and r.text == "a red circle" and len(r.audio) > 0

    _reference(tmp_path)
    (tmp_path / "say.yaml").write_text(SPEECH_FILE)
    mute_dir = mute.save_pretrained(tmp_path / "mute")
    outcome = run_workflow_file(tmp_path / "say.yaml", model=str(mute_dir), speech_model=str(speech_model_dir),
                                out=tmp_path / "out")
    assert outcome.manifest["model"]["checkpoint"] == str(mute_dir)
    assert outcome.manifest["speech_model"]["checkpoint"] == str(speech_model_dir)

    out = tmp_path / "said.wav"
    main(["run", "say a red circle", "--model", str(mute_dir), "--speech-model", str(speech_model_dir), "-o", str(out)])
    assert out.is_file() and str(out) in capsys.readouterr().out

    from click.testing import CliRunner

    from latentlm.cli.main import cli

    result = CliRunner().invoke(cli, ["chat", "--model", str(mute_dir), "--speech-model", str(speech_model_dir), "-o",
                                      str(tmp_path / "chat")], input="say a red circle\n/bye\n")
    assert result.exit_code == 0 and list((tmp_path / "chat").glob("*.wav")), result.output
