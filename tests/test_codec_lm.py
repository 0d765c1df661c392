"""The codec-token baseline (VALL-E style): AR and NAR inputs and losses, what the NAR may see, stopping,
seeded sampling, checkpoints, training through the accelerate loop and `latentlm eval tts` (tiny models)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from latentlm.codec_lm import IGNORE, CodecBatch, CodecLM, CodecLMConfig, Utterance
from latentlm.codec_lm_speech import code_prompt, generate_codec_speech, sample_codes
from latentlm.codecs import EncodecTokenizer, EncodecTokenizerConfig
from latentlm.data import espeak
from latentlm.errors import CheckpointError, PromptError
from latentlm.tokenizer import TextTokenizer

N_Q, BINS = 3, 64
needs_espeak = pytest.mark.skipif(not espeak.available(),
                                  reason=f"libespeak-ng is not installed: {espeak.INSTALL_HINT}")
TINY_CODEC = dict(ratios=(8, 5, 4, 2), n_filters=2, dimension=8, n_q=N_Q, bins=BINS, kmeans_init=False)  # 50 Hz


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path) -> TextTokenizer:
    return TextTokenizer(tiny_tokenizer_path)


def tiny_codec() -> EncodecTokenizer:
    torch.manual_seed(0)
    return EncodecTokenizer(EncodecTokenizerConfig(**TINY_CODEC)).eval()  # random codebooks: varied codes


def baseline(tok: TextTokenizer, seed: int = 0, **config) -> CodecLM:
    torch.manual_seed(seed)
    cfg = CodecLMConfig(vocab_size=tok.vocab_size, n_q=N_Q, bins=BINS, backbone={"d_model": 32, "n_layers": 2,
                                                                                  "n_heads": 4}, **config)
    return CodecLM(cfg, tok, tiny_codec()).eval()


def codes(t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, BINS, (N_Q, t), generator=torch.Generator().manual_seed(seed))


def test_ar_targets_are_codebook_one_then_end_after_the_text_and_prompt(tok):
    model = baseline(tok)
    plain = Utterance([11, 12], codes(3, 0))
    voiced = Utterance([13], codes(2, 1), prompt_text=[14, 15], prompt_codes=codes(4, 2))
    x, valid, targets = model.ar_inputs([plain, voiced])
    # plain:  <s> 11 12 <audio> c c c          (7 positions, left-padded by 4)
    # voiced: <s> 14 15 13 <audio> p p p p c c  (11 positions)
    assert x.shape == (2, 11, 32) and valid.sum(1).tolist() == [7, 11] and not valid[0, :4].any()
    end = model.config.end_id
    assert targets[0].tolist() == [IGNORE] * 7 + plain.codes[0].tolist() + [end]
    # the prompt's codes are inputs only: the first target sits at the prompt's last code
    assert targets[1].tolist() == [IGNORE] * 8 + voiced.codes[0].tolist() + [end]
    model.train()
    loss, logs = model(CodecBatch([plain, voiced], [1, 2]))
    assert torch.isfinite(loss) and set(logs) == {"ar_ce", "nar_ce"}
    assert loss.item() == pytest.approx(logs["ar_ce"] + logs["nar_ce"], rel=1e-5)


def test_nar_logits_cover_every_frame_and_see_only_codebooks_below_k(tok):
    model = baseline(tok)
    u = Utterance([11, 12, 13], codes(6, 0), prompt_text=[14], prompt_codes=codes(4, 1))
    with torch.no_grad():
        base = model.nar_logits([u], [1])[0]  # codebook 2 from codebook 1
        assert base.shape == (6, BINS)
        later = codes(6, 5)
        hidden = Utterance(u.text, torch.cat([u.codes[:1], later[1:]]), u.prompt_text, u.prompt_codes)
        assert torch.equal(model.nar_logits([hidden], [1])[0], base)  # codebooks >= 2 of the target: unseen
        last = u.codes.clone()
        last[0, -1] = (last[0, -1] + 1) % BINS
        changed = model.nar_logits([Utterance(u.text, last, u.prompt_text, u.prompt_codes)], [1])[0]
        assert not torch.allclose(changed[0], base[0])  # frame 1 sees the last frame: right context
        prompt = u.prompt_codes.clone()
        prompt[N_Q - 1, 0] = (prompt[N_Q - 1, 0] + 1) % BINS
        voiced = model.nar_logits([Utterance(u.text, u.codes, u.prompt_text, prompt)], [1])[0]
        assert not torch.allclose(voiced, base)  # the prompt enters with every codebook
        assert not torch.allclose(model.nar_logits([u], [2])[0], base)  # the stage changes the question


def test_each_row_trains_the_head_of_its_own_stage(tok):
    model = baseline(tok).train()
    rows = [Utterance([11], codes(4, 0)), Utterance([12, 13], codes(5, 1))]
    loss, _ = model(CodecBatch(rows, [1, 1]))
    loss.backward()
    grad = model.nar_head.grad  # [n_q - 1, bins, d]
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0


class ScriptedHead(nn.Module):
    """An AR head that prefers code 7 for the first `end_after` calls, then END (or never, when None)."""

    def __init__(self, end_id: int, end_after: int | None) -> None:
        super().__init__()
        self.end_id, self.end_after, self.calls = end_id, end_after, 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*h.shape[:-1], self.end_id + 1)
        ending = self.end_after is not None and self.calls >= self.end_after
        logits[..., self.end_id if ending else 7] = 50.0
        self.calls += 1
        return logits


def test_the_ar_stops_at_its_end_code(tok):
    model = baseline(tok)
    model.ar_head = ScriptedHead(model.config.end_id, end_after=3)
    out = sample_codes(model, ["a red circle"], generator=torch.Generator().manual_seed(0))
    assert len(out) == 1 and out[0].shape == (N_Q, 3) and out[0][0].tolist() == [7, 7, 7]


def test_the_ar_never_ends_before_one_frame(tok):
    model = baseline(tok)
    model.ar_head = ScriptedHead(model.config.end_id, end_after=0)
    out = sample_codes(model, ["a red circle"], generator=torch.Generator().manual_seed(0))
    assert out[0].shape == (N_Q, 1)


def test_the_ar_is_capped_at_16_frames_per_text_token(tok):
    model = baseline(tok)
    model.ar_head = ScriptedHead(model.config.end_id, end_after=None)
    texts = ["a red circle", "a small blue square above a green triangle"]
    out = sample_codes(model, texts, generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in out] == [(N_Q, 16 * len(tok.encode(t))) for t in texts]
    assert all(int(c.max()) < BINS for c in out)  # END never reaches the codec


def test_speech_is_deterministic_for_a_seed(tok):
    model = baseline(tok, max_audio_per_token=3)
    a = generate_codec_speech(model, ["a blue square"], top_k=None, seed=4)[0]
    b = generate_codec_speech(model, ["a blue square"], top_k=None, seed=4)[0]
    c = generate_codec_speech(model, ["a blue square"], top_k=None, seed=5)[0]
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) % 320 == 0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_voice_prompts_and_user_errors(tok):
    model = baseline(tok, max_audio_per_token=1)
    wav = (0.1 * np.sin(np.arange(3200) / 3)).astype(np.float32)
    prompt = code_prompt(model, wav, 16_000, "a red circle")
    assert prompt.codes.shape == (N_Q, 10) and prompt.transcript == "a red circle"
    assert len(generate_codec_speech(model, ["a blue square"], prompt, seed=1)[0]) > 0
    with pytest.raises(PromptError, match="voice_text"):
        code_prompt(model, wav, 16_000, " ")
    with pytest.raises(PromptError, match="empty"):
        generate_codec_speech(model, [""])
    with pytest.raises(PromptError, match="split it into sentences"):
        generate_codec_speech(model, ["a red circle " * 60])
    with pytest.raises(ValueError, match="temperature"):
        generate_codec_speech(model, ["a red circle"], temperature=0)


def test_save_and_load_round_trip(tok, tmp_path):
    from latentlm.model import LatentLM

    model = baseline(tok, max_audio_per_token=2)
    folder = model.save_pretrained(tmp_path / "baseline")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "checksums.json", "audio_codec"} <= names
    assert json.loads((folder / "config.json").read_text())["kind"] == "codec_lm"
    loaded = CodecLM.from_pretrained(folder)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert np.array_equal(generate_codec_speech(model, ["a red circle"], seed=2)[0],
                          generate_codec_speech(loaded, ["a red circle"], seed=2)[0])
    with pytest.raises(CheckpointError, match="codec-token baseline"):
        LatentLM.from_pretrained(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        CodecLM.from_pretrained(folder)


@pytest.mark.parametrize("stages", [("shapes-tiny-stage6.yaml", "shapes-tiny-stage6b.yaml"),
                                    ("shapes-tiny-stage6c.yaml",), ("speech-tiny.yaml",), ("speech-tiny-m.yaml",),
                                    ("speech-tiny-n.yaml",), ("speech-tiny-nlr.yaml",)])
def test_the_config_matches_stage_6_in_size_data_and_budget(stages):
    """speech-valle.yaml: stage 6's backbone and speech data, and as many text-to-speech examples as the
    speech stages train on (6 + 6b, 6c in one schedule, or the speech specialist: their batches that are
    not in-context, times the tts share of the mixture). The voice prompt's form is each model's own (the
    baseline's is VALL-E's prefix)."""
    from pathlib import Path

    import latentlm
    from latentlm.config_io import load_yaml_config
    from latentlm.training.codec_lm import CodecLMTrainConfig
    from latentlm.training.lm import LMTrainConfig

    configs = Path(latentlm.__file__).parent / "configs"
    valle = load_yaml_config(configs / "speech-valle.yaml", CodecLMTrainConfig)
    tts_examples = 0.0
    for name in stages:
        stage = load_yaml_config(configs / name, LMTrainConfig)
        assert valle.backbone == stage.backbone and valle.backbone.d_model == 256
        own = {"prompt_form", "target_noise", "input_noise"}  # the LatentLM's own choices
        assert valle.speech.model_dump(exclude=own) == stage.data.speech.model_dump(exclude=own)
        tasks, train = stage.data.tasks, stage.train
        every = stage.data.icl.every
        plain_batches = train.last_step - (train.last_step // every if every else 0)
        tts_examples += plain_batches * train.batch_size * tasks["tts"] / sum(tasks.values())
    assert valle.train.steps * valle.train.batch_size == pytest.approx(tts_examples)


TRAIN_YAML = """
tokenizer: {tokenizer}
codec: {codec}
backbone: {{d_model: 32, n_layers: 2, n_heads: 4}}
speech: {{n_train: 6, voice_prompt: 0.5, max_prompt_seconds: 4.0}}
train: {{steps: 30, batch_size: 4, lr: 0.003, warmup_steps: 3, log_every: 1, save_every: 10, seed: 0}}
"""


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer_path):
    """A 30-step tiny baseline run (EnCodec tokenizer with random codebooks, 6 utterances): (config, run)."""
    if not espeak.available():
        pytest.skip(f"libespeak-ng is not installed: {espeak.INSTALL_HINT}")
    from latentlm.checkpoint import save_codec
    from latentlm.training.codec_lm import train_codec_lm

    root = tmp_path_factory.mktemp("baseline")
    codec_dir = save_codec(tiny_codec(), root / "codec")
    config = root / "valle.yaml"
    config.write_text(TRAIN_YAML.format(tokenizer=tiny_tokenizer_path, codec=codec_dir))
    train_codec_lm(config, root / "run", progress=False)
    return config, root / "run"


@needs_espeak
@pytest.mark.slow
def test_a_tiny_training_lowers_the_loss_and_resumes_exactly(trained, tmp_path):
    from latentlm.training.codec_lm import train_codec_lm

    config, run = trained
    losses = _losses(run)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert (run / "speech_codes_6.pt").is_file() and (run / "final" / "checksums.json").is_file()
    # batches: a pure function of the step, split over processes row by row
    from latentlm.config_io import load_yaml_config
    from latentlm.training.codec_lm import CodecLMTask, CodecLMTrainConfig

    task = CodecLMTask(load_yaml_config(config, CodecLMTrainConfig), run, progress=False)  # from the caches
    whole, halves = task.batch(7, 4), [task.batch(7, 4, rank, 2) for rank in (0, 1)]
    assert [u.text for u in whole.rows] == [u.text for h in halves for u in h.rows]
    assert whole.stages == halves[0].stages + halves[1].stages and all(1 <= k < N_Q for k in whole.stages)
    assert any(u.prompt_codes is not None for s in range(5) for u in task.batch(s, 4).rows)
    # resumable: 15 steps, stop, 15 more give the straight run's losses (the speech caches copied over)
    for name in ("speech_train_6.npz", "speech_codes_6.pt"):
        (tmp_path / "resumed").mkdir(exist_ok=True)
        (tmp_path / "resumed" / name).write_bytes((run / name).read_bytes())
    stopped = train_codec_lm(config, tmp_path / "resumed", stop_after=15, progress=False)
    assert stopped.name == "step_0000015"
    train_codec_lm(config, tmp_path / "resumed", resume=True, progress=False)
    assert _losses(tmp_path / "resumed") == losses


@needs_espeak
@pytest.mark.slow
def test_eval_tts_takes_a_baseline_checkpoint(trained, capsys):
    pytest.importorskip("pocketsphinx")
    from latentlm.cli.main import main
    from latentlm.evaluation.tts import eval_tts, load_tts_model

    final = trained[1] / "final"
    model = load_tts_model(final)
    assert isinstance(model, CodecLM)
    r = eval_tts(model, n=2, split="test", progress=False)
    keys = {"grammar_exact", "wer", "mcd_db", "duration_within_20pct", "f0_within_10pct_held_out", "real_time_factor",
            "ar_steps_per_second", "nar_passes_per_second", "network_calls_per_second", "head_calls_per_second"}
    assert keys <= set(r) and r["model"] == "codec_lm" and r["head_calls_per_second"] == 0
    assert r["ar_steps_per_second"] == pytest.approx(50, rel=0.01) and r["real_time_factor"] > 0
    assert r["network_calls_per_second"] == pytest.approx(r["ar_steps_per_second"] + r["nar_passes_per_second"])
    main(["eval", "tts", "--model", str(final), "--n", "1", "--top-k", "5"])
    assert json.loads(capsys.readouterr().out)["model"] == "codec_lm"
    with pytest.raises(SystemExit) as stop:
        main(["eval", "tts", "--model", str(final), "--n", "1", "--steps", "3"])
    assert stop.value.code == 2 and "--temperature and --top-k" in capsys.readouterr().err


def test_passes_of_similar_length_give_the_one_pass_loss_and_gradients(tok):
    """Sorted passes of a few rows (less padding) compute the same mean losses as one left-padded pass."""
    model = baseline(tok).train()
    rows = [Utterance([11, 12], codes(3 + 4 * i, i), prompt_text=[13] * (i % 2),
                      prompt_codes=codes(2 + i, 10 + i) if i % 2 else None) for i in range(5)]
    batch = CodecBatch(rows, [1 + i % (N_Q - 1) for i in range(5)])
    grads, losses = [], []
    for rows_per_pass in (None, 2):
        model.zero_grad()
        loss, logs = model(batch, rows_per_pass=rows_per_pass)
        loss.backward()
        losses.append((loss.item(), logs["ar_ce"], logs["nar_ce"]))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    for u, k in zip(rows, batch.stages):  # the lengths that order the passes are those of the inputs
        assert model.ar_inputs([u])[0].shape[1] == model._ar_length(u)
        assert model.nar_inputs([u], [k])[0].shape[1] == model._nar_length(u)
    assert [len(p) for p in CodecLM._passes([5, 1, 4, 2, 3], 2)] == [2, 2, 1]
    assert CodecLM._passes([5, 1, 4, 2, 3], 2)[0] == [1, 3]  # the two shortest rows first
