"""The `latentlm` command line: a thin layer over the Python API.

User errors (bad options, prompts, configs or checkpoints) exit with code 2 and one line on stderr.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from latentlm.cli.outputs import (PICTURE_FORMATS, check_picture_path, check_writable_dir, echo_warnings,  # noqa: F401
                                  one_line, save_picture)
from latentlm.cli.icl_options import icl_options, icl_session
from latentlm.cli.verify_option import NO_VERIFY
from latentlm.errors import LatentLMError
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE

BACKBONES = ["transformer", "retnet", "yoco", "longnet", "bitnet"]


SEED = click.IntRange(0, 2**63 - 1)  # a seed option: a bad value names the option at parse time
STRICT = click.option("--strict", is_flag=True,
                      help="Refuse (exit 2) a prompt with words or a form the model was not trained on, "
                           "instead of running it with a warning.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latentlm")
def cli() -> None:
    """latentlm: multimodal latent language models with next-token diffusion.

    \b
    Quick start:
      latentlm generate --modality image --prompt "a red circle above a blue square" -o out.png
    """


# ---- data ----------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Generate built-in data sets."""


@data.command("shapes")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of scenes.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="Index of the first scene.")
def data_shapes(n: int, out: Path, split: str, start: int) -> None:
    """Write shapes-world PNGs and manifest.jsonl (caption, objects, boxes, grounding).

    \b
    Example:
      latentlm data shapes --n 1000 -o data/shapes-train
    """
    from latentlm.data.shapes import write_split

    manifest = write_split(out, n, split, start)
    click.echo(str(manifest))


@data.command("speech")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of utterances.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="Index of the first utterance.")
def data_speech(n: int, out: Path, split: str, start: int) -> None:
    """Write espeak-ng speech (16 kHz mono WAVs) and manifest.jsonl (text, voice, duration).

    Needs the speech extra (pip install -e '.[speech]').

    \b
    Example:
      latentlm data speech --n 1000 -o data/speech-train
    """
    from latentlm.data.speech import write_speech_split

    manifest = write_speech_split(out, n, split, start)
    click.echo(str(manifest))


# ---- training --------------------------------------------------------------------------------
@cli.command("train-tokenizer")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write tokenizer.model.")
@click.option("--n-scenes", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Train-split scenes whose captions and grounding strings form the corpus.")
@click.option("--vocab-size", type=click.IntRange(min=1100), default=1400, show_default=True)
def train_tokenizer_cmd(out: Path, n_scenes: int, vocab_size: int) -> None:
    """Train the sentencepiece text tokenizer on our own corpus.

    \b
    Example:
      latentlm train-tokenizer -o runs/shapes-tiny/tokenizer.model
    """
    from latentlm.tokenizer import shapes_corpus, train_tokenizer

    tok = train_tokenizer(shapes_corpus(n_scenes), out, vocab_size)
    click.echo(f"{out} ({tok.vocab_size} tokens)")


_run_options = [
    click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Run folder: checkpoints, metrics.jsonl and final/."),
    click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint."),
    click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Stop (with a checkpoint) after this long; continue later with --resume."),
    click.option("--no-progress", is_flag=True, help="Hide the progress bar."),
    click.option("--export-to", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Train nothing: export the run's newest checkpoint (its moving-average weights where the run "
                      "keeps them) to this folder, to try a run mid-way. The run may be training meanwhile."),
]


def check_export(export_to: Path | None, num_processes: int, run: Path) -> None:
    """--export-to's errors, before any data or model work."""
    if export_to is None:
        return
    from latentlm.training.checkpoints import newest_checkpoint

    if num_processes > 1:
        raise click.UsageError("--export-to loads one checkpoint in one process: drop --num-processes")
    newest_checkpoint(run, "--export-to")  # none yet: the same error as the trainer's, before any work


def run_options(f):
    for option in reversed(_run_options):
        f = option(f)
    return f


NUM_PROCESSES = click.option(
    "--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
    help="Train in N local processes (DDP; train.distributed: fsdp on GPUs), each on batch_size / N rows. "
         "On several machines use torchrun or accelerate launch instead (README).")


@cli.command("train-codec")
@click.argument("config", type=click.Path(path_type=Path))
@run_options
@NUM_PROCESSES
@NO_VERIFY
def train_codec_cmd(config: Path, out: Path, resume: bool, max_minutes: float | None, no_progress: bool,
                    export_to: Path | None, num_processes: int) -> None:
    """Train a codec from a YAML config; its `kind` picks the codec and data.

    Kinds: image_sigma_vae (shapes scenes), audio_sigma_vae and encodec_tokenizer (speech crops).

    \b
    Examples:
      latentlm train-codec latentlm/configs/shapes-tiny-vae.yaml -o runs/vae
      latentlm train-codec latentlm/configs/speech-vae.yaml -o runs/speech-vae
      latentlm train-codec latentlm/configs/shapes-tiny-vae.yaml -o runs/vae --num-processes 2
    """
    from latentlm.training.codec import train_codec
    from latentlm.training.launch import is_main_process

    check_export(export_to, num_processes, out)
    final = train_codec(config, out, resume=resume, max_minutes=max_minutes, progress=not no_progress,
                        num_processes=num_processes, export_to=export_to)
    if is_main_process():
        click.echo(str(final))


@cli.command("train")
@click.argument("config", type=click.Path(path_type=Path))
@run_options
@NUM_PROCESSES
@NO_VERIFY
@click.option("--backbone", type=click.Choice(BACKBONES), default=None, help="Override the config's backbone kind.")
def train_cmd(config: Path, out: Path, resume: bool, max_minutes: float | None, no_progress: bool,
              export_to: Path | None, num_processes: int, backbone: str | None) -> None:
    """Train a LatentLM from a YAML config (accelerate: CPU, DDP, FSDP, mixed precision).

    \b
    Example:
      latentlm train latentlm/configs/shapes-tiny.yaml -o runs/shapes-tiny
      latentlm train latentlm/configs/shapes-tiny.yaml -o runs/shapes-tiny --resume
      latentlm train latentlm/configs/shapes-tiny.yaml -o runs/shapes-tiny --num-processes 2
      latentlm train latentlm/configs/shapes-tiny.yaml -o runs/shapes-tiny --export-to runs/probe
    """
    from latentlm.training.launch import is_main_process
    from latentlm.training.lm import train_lm

    check_export(export_to, num_processes, out)
    final = train_lm(config, out, resume=resume, max_minutes=max_minutes, progress=not no_progress,
                     backbone=backbone, num_processes=num_processes, export_to=export_to)
    if is_main_process():
        click.echo(str(final))


@cli.command("train-baseline")
@click.argument("config", type=click.Path(path_type=Path))
@run_options
@NUM_PROCESSES
@NO_VERIFY
def train_baseline_cmd(config: Path, out: Path, resume: bool, max_minutes: float | None, no_progress: bool,
                       export_to: Path | None, num_processes: int) -> None:
    """Train the codec-token TTS baseline (VALL-E style: AR over codebook 1, NAR over the rest) on EnCodec codes.

    \b
    Example:
      latentlm train-baseline latentlm/configs/speech-valle.yaml -o runs/speech-valle
      latentlm train-baseline latentlm/configs/speech-valle.yaml -o runs/speech-valle --resume --max-minutes 60
    """
    from latentlm.training.codec_lm import train_codec_lm

    check_export(export_to, num_processes, out)
    click.echo(str(train_codec_lm(config, out, resume=resume, max_minutes=max_minutes, progress=not no_progress,
                                  num_processes=num_processes, export_to=export_to)))


@cli.command("export")
@click.argument("source")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@NO_VERIFY
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float16", show_default=True,
              help="Storage precision of the weights (loaded back as float32).")
def export_cmd(source: str, out: Path, dtype: str) -> None:
    """Re-save a trained LatentLM, or a codec, as a compact checkpoint folder (e.g. for shipping).

    \b
    Example:
      latentlm export runs/shapes-tiny/final -o latentlm/pretrained/shapes-tiny
      latentlm export runs/speech-vae-3/final -o latentlm/pretrained/codecs/speech-vae
    """
    import torch

    from latentlm.checkpoint import is_codec_dir, load_codec, save_codec
    from latentlm.model import LatentLM

    dtype_ = getattr(torch, dtype)
    if is_codec_dir(source):
        save_codec(load_codec(source), out, dtype_)
    else:
        LatentLM.from_pretrained(source).save_pretrained(out, dtype=dtype_)
    click.echo(str(out))


# ---- kernels ---------------------------------------------------------------------------------
@cli.command("build-kernels")
def build_kernels() -> None:
    """Compile the C++ CPU kernels now, in parallel (else each compiles on first use, about a minute).

    \b
    Prints one line per kernel; one that cannot be compiled leaves its ops on the PyTorch reference.
    Example:
      latentlm build-kernels
    """
    from latentlm.kernels.cpp_build import all_extensions, build_all

    extensions = all_extensions()
    for name, built in build_all().items():
        state = "ready" if built else "not built: its ops use the PyTorch reference"
        click.echo(f"{name}: {state} ({extensions[name].build_directory()})")


# ---- generation ------------------------------------------------------------------------------
@cli.command()
@click.option("--modality", type=click.Choice(["image", "audio"]), default="image", show_default=True)
@click.option("--prompt", required=True, help="What to generate, e.g. 'a red circle above a blue square'.")
@click.option("--steps", type=click.IntRange(min=1, max=1000), default=None,
              help=f"Diffusion sampling steps per latent [default: {DEFAULT_STEPS} for pictures, 10 for speech].")
@click.option("--cfg", "cfg", type=click.FloatRange(min=0), default=None,
              help=f"Classifier-free guidance scale, 1 = off [default: {DEFAULT_CFG} for pictures, 2.0 for speech].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Scale of the starting noise (below 1: nearer the mode, less varied) [default: {DEFAULT_TEMPERATURE} "
                   "for pictures, 1.0 for speech].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--model", default="shapes-tiny", show_default=True, help="Shipped name, checkpoint folder or hub id.")
@NO_VERIFY
@click.option("--backbone", type=click.Choice(BACKBONES), default=None,
              help="The backbone kind the model must have (checked; weights belong to their backbone).")
@click.option("--voice", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audio only: a few seconds of a speaker (WAV/FLAC) to speak like.")
@click.option("--voice-text", default=None,
              help="Audio only: the words said in --voice (default: the .txt file beside it).")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output picture (.png, .jpg/.jpeg, .webp, .bmp) or sound (.wav, .flac).")
@STRICT
def generate(modality: str, prompt: str, steps: int | None, cfg: float | None, temperature: float | None, seed: int,
             model: str, backbone: str | None, voice: Path | None, voice_text: str | None, out: Path,
             strict: bool) -> None:
    """Generate a picture or speech from a text prompt.

    The shipped model (shapes-tiny) draws only its shapes world: 'a [small|large] <colour> <shape>' or
    'a <colour> <shape> <relation> a <colour> <shape>', with the colours red, green, blue, yellow,
    purple, orange; the shapes circle, square, triangle; the sizes small and large (one object only);
    the relations left of, right of, above, below. A prompt with other words, or in another form, still
    draws but prints a warning on stderr naming them; --strict refuses it (exit 2).

    \b
    Example:
      latentlm generate --modality image --prompt "a red circle above a blue square" -o out.png
      latentlm generate --prompt "a blue square" --model runs/retnet/final --backbone retnet -o sq.png
      latentlm generate --modality audio --prompt "a red circle" --voice ref.wav -o said.wav
    """
    from latentlm.workflows.session import check_seed

    check_seed(seed, "--seed")
    if not prompt.strip():
        raise LatentLMError("the prompt is empty; describe the picture, e.g. 'a red circle above a blue square'")
    if modality == "audio":
        _speak(prompt, steps, cfg, temperature, seed, model, backbone, voice, voice_text, out)
        return
    if voice is not None or voice_text is not None:
        raise LatentLMError("--voice and --voice-text are for --modality audio")
    _draw(prompt, steps, cfg, temperature, seed, model, backbone, out, strict)


def _draw(prompt: str, steps, cfg, temperature, seed: int, model: str, backbone, out: Path, strict: bool) -> None:
    out = check_picture_path(out)  # before any model work
    from latentlm.workflows.planner import plan
    from latentlm.workflows.session import Session

    session = Session(model, backbone=backbone, steps=steps or DEFAULT_STEPS, cfg_scale=DEFAULT_CFG if cfg is None else cfg,
                      temperature=temperature or DEFAULT_TEMPERATURE, strict=strict)
    request = plan(prompt, drawing=True)
    if [s.workflow for s in request.steps] != ["text-to-image"]:
        raise LatentLMError(f"--prompt {prompt!r} is not a description of a picture; e.g. 'a red circle'")
    result = session.draw(request.steps[0].args["prompt"], seed=seed)  # --strict refuses here, before the model loads
    save_picture(result.image, out)
    echo_warnings(result)
    click.echo(str(out))


def _speak(text: str, steps, cfg, temperature, seed: int, model: str, backbone, voice: Path | None,
           voice_text: str | None, out: Path) -> None:
    from latentlm.audio_io import check_audio_path, save_audio
    from latentlm.workflows.session import Session

    out = check_audio_path(out)  # before any model work
    check_writable_dir(out.parent, "--out", shown=out)
    sampling = {k: v for k, v in (("steps", steps), ("cfg_scale", cfg), ("temperature", temperature)) if v is not None}
    result = Session(model, backbone=backbone).speak(text, str(voice) if voice else None, voice_text, seed, **sampling)
    save_audio(result.audio, result.sample_rate, out)
    click.echo(str(out))


# ---- understanding ---------------------------------------------------------------------------
_model_option = click.option("--model", default="shapes-tiny", show_default=True,
                             help="Shipped name, checkpoint folder or hub id.")
_json_option = click.option("--json", "as_json", is_flag=True,
                            help='Print {"text", "kosmos", "entities": [{"phrase", "boxes"}]} (boxes in pixels).')


def _echo_result(result, as_json: bool) -> None:
    echo_warnings(result)
    if as_json:
        entities = [{"phrase": e.phrase, "boxes": [[round(v, 2) for v in b] for b in e.boxes]}
                    for e in result.entities or []]
        click.echo(json.dumps({"text": result.text, "kosmos": result.kosmos, "entities": entities}))
        return
    click.echo(result.text)
    for e in result.entities or []:
        boxes = "; ".join("(" + ", ".join(f"{v:.0f}" for v in b) + ")" for b in e.boxes)
        click.echo(f"  {e.phrase}: {boxes}")


def _session(model: str, strict: bool = False, icl=None):
    return icl_session(model, icl, strict)


def _check_image(image: str) -> None:
    from latentlm.images import load_image

    load_image(image)  # a missing or unreadable picture fails here, before the model loads


@cli.command("caption")
@click.argument("image")
@click.option("--grounded", is_flag=True, help="Kosmos-2 style: each object phrase with its box.")
@_model_option
@NO_VERIFY
@_json_option
@icl_options
def caption_cmd(image: str, grounded: bool, model: str, as_json: bool, icl) -> None:
    """Describe a picture.

    \b
    Example:
      latentlm caption scene.png --grounded
      latentlm caption scene.png --icl auto
    """
    _check_image(image)
    _echo_result(_session(model, icl=icl).caption(image, grounded=grounded), as_json)


@cli.command("ask")
@click.argument("image")
@click.argument("question")
@_model_option
@NO_VERIFY
@_json_option
@STRICT
@icl_options
def ask_cmd(image: str, question: str, model: str, as_json: bool, strict: bool, icl) -> None:
    """Answer a question about a picture.

    \b
    Example:
      latentlm ask scene.png "what colour is the circle?"
    """
    if not question.strip():
        raise LatentLMError("the question is empty; e.g. 'what colour is the circle?'")
    _check_image(image)
    _echo_result(_session(model, strict, icl).ask(image, question), as_json)


@cli.command("ground")
@click.argument("image")
@click.argument("phrase")
@click.option("--draw", "draw_to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the picture with the box drawn on it (.png, .jpg, .webp or .bmp).")
@_model_option
@NO_VERIFY
@_json_option
@STRICT
@icl_options
def ground_cmd(image: str, phrase: str, draw_to: Path | None, model: str, as_json: bool, strict: bool, icl) -> None:
    """Find a phrase in a picture: its box in the picture's pixels.

    \b
    Example:
      latentlm ground scene.png "the blue square" --draw boxes.png
    """
    if not phrase.strip():
        raise LatentLMError("the phrase is empty; e.g. 'the blue square'")
    if draw_to is not None:
        draw_to = check_picture_path(draw_to, "--draw")
    _check_image(image)
    result = _session(model, strict, icl).ground(image, phrase)
    if draw_to is not None:
        save_picture(result.image, draw_to)
    _echo_result(result, as_json)


# ---- evaluation ------------------------------------------------------------------------------
@cli.group("eval")
def eval_group() -> None:
    """Measure models: prompt adherence, codec reconstruction, captions, questions, grounding."""


@eval_group.command("t2i")
@click.option("--model", default="shapes-tiny", show_default=True)
@NO_VERIFY
@click.option("--n-single", type=click.IntRange(min=1), default=120, show_default=True)
@click.option("--n-pair", type=click.IntRange(min=1), default=120, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True)
@click.option("--cfg", "cfg", type=click.FloatRange(min=0), default=DEFAULT_CFG, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TEMPERATURE,
              show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True,
              help="val for choosing sampling settings, test for reporting.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here.")
def eval_t2i_cmd(model: str, n_single: int, n_pair: int, steps: int, cfg: float, temperature: float, seed: int,
                 split: str, json_out: Path | None) -> None:
    """Prompt adherence of text-to-image on the fixed held-out prompt set.

    \b
    Example:
      latentlm eval t2i --model shapes-tiny
    """
    from latentlm.evaluation.t2i import eval_t2i
    from latentlm.model import LatentLM

    report = eval_t2i(LatentLM.from_pretrained(model), n_single, n_pair, steps, cfg, seed, temperature=temperature,
                      split=split)
    text = json.dumps(report, indent=2)
    if json_out:
        json_out.write_text(text + "\n")
    click.echo(text)


@eval_group.command("codec")
@click.option("--modality", type=click.Choice(["image", "audio"]), default="image", show_default=True)
@click.option("--model", default="shapes-tiny", show_default=True, help="A LatentLM (its codec of --modality is used).")
@NO_VERIFY
@click.option("--codec", "codec_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A codec checkpoint folder instead of --model.")
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Items (default 256 pictures, 60 utterances).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="test to report; val for choices.")
def eval_codec_cmd(modality: str, model: str, codec_dir: Path | None, n: int | None, split: str) -> None:
    """Reconstruction quality of a codec on held-out items: PSNR of the image sigma-VAE; mel and MR-STFT
    distances, rates and round-trip intelligibility (pocketsphinx, shapes grammar) of an audio codec.

    \b
    Example:
      latentlm eval codec --model shapes-tiny
      latentlm eval codec --modality audio --codec speech-vae --split val
    """
    from latentlm.checkpoint import load_codec
    from latentlm.model import LatentLM

    if codec_dir:
        codec = load_codec(codec_dir)
    else:
        lm = LatentLM.from_pretrained(model)
        if modality not in lm.codecs:
            raise LatentLMError(f"model {model!r} has no {modality} codec; pass one with --codec DIR")
        codec = lm.codecs[modality]
    if getattr(codec, "modality", "image") != modality:
        raise LatentLMError(f"{codec_dir} is not an {modality} codec; use --modality {getattr(codec, 'modality', 'image')}")
    if modality == "image":
        from latentlm.evaluation.codec import eval_codec

        click.echo(json.dumps(eval_codec(codec, n or 256, split), indent=2))
        return
    from latentlm.evaluation.audio_codec import eval_audio_codec, round_trip_intelligibility

    report = eval_audio_codec(codec, n or 60, split) | round_trip_intelligibility(codec, n or 60, split)
    click.echo(json.dumps(report, indent=2))


@eval_group.command("tts")
@click.option("--model", default="shapes-tiny", show_default=True,
              help="A LatentLM, or a codec-token baseline (latentlm train-baseline).")
@NO_VERIFY
@click.option("--n", "n", type=click.IntRange(min=1), default=40, show_default=True, help="Held-out sentences.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="test to report; val for choices (steps, CFG).")
@click.option("--steps", type=click.IntRange(min=1, max=1000), default=None, help="DPM-Solver++ steps per latent.")
@click.option("--cfg", "cfg", type=click.FloatRange(min=0), default=None, help="Classifier-free guidance scale.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="LatentLM: scale of the starting noise; baseline: of the AR's logits [default: 1.0].")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=None,
              help="Baseline only: sample each code from the k most likely [default: 50].")
@click.option("--seed", type=SEED, default=0, show_default=True)
def eval_tts_cmd(model: str, n: int, split: str, steps: int | None, cfg: float | None, temperature: float | None,
                 top_k: int | None, seed: int) -> None:
    """Text-to-speech on held-out sentences against espeak-ng's rendering (JSON on stdout): intelligibility
    (pocketsphinx), MCD-DTW, duration, voice match, real-time factor, AR steps and network calls per second.

    \b
    Examples:
      latentlm eval tts --model shapes-tiny --n 40
      latentlm eval tts --model runs/speech-valle/final --n 40      # the codec-token baseline
    """
    from latentlm.codec_lm import CodecLM
    from latentlm.codec_lm_speech import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
    from latentlm.evaluation.tts import eval_tts, load_tts_model
    from latentlm.speech import DEFAULT_SPEECH_CFG, DEFAULT_SPEECH_STEPS, DEFAULT_SPEECH_TEMPERATURE

    lm = load_tts_model(model)
    baseline = isinstance(lm, CodecLM)
    if baseline and (steps is not None or cfg is not None):
        raise LatentLMError("--steps and --cfg are for LatentLM models; the codec-token baseline samples with "
                            "--temperature and --top-k")
    if not baseline and top_k is not None:
        raise LatentLMError("--top-k is for the codec-token baseline; a LatentLM samples with --steps, --cfg and "
                            "--temperature")
    report = eval_tts(lm, n, split, steps or DEFAULT_SPEECH_STEPS, DEFAULT_SPEECH_CFG if cfg is None else cfg,
                      temperature or (DEFAULT_TEMPERATURE if baseline else DEFAULT_SPEECH_TEMPERATURE), seed=seed,
                      top_k=top_k or DEFAULT_TOP_K)
    click.echo(json.dumps(report, indent=2))


def _eval_understanding(name: str, fn: str, default_n: int, what: str):
    """`latentlm eval NAME`: one understanding evaluation, JSON on stdout."""

    @eval_group.command(name, help=f"{what}, on held-out scenes (JSON on stdout).\n\n\b\nExample:\n"
                                  f"  latentlm eval {name} --model shapes-tiny")
    @click.option("--model", default="shapes-tiny", show_default=True)
    @NO_VERIFY
    @click.option("--n", "n", type=click.IntRange(min=1), default=default_n, show_default=True, help="Scenes.")
    @click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True,
                  help="val for choosing settings, test for reporting.")
    @click.option("--renderer", type=click.Choice(["shapes", "plain"]), default="shapes", show_default=True,
                  help="plain: scenes drawn by a second, anti-aliased renderer written from the spec.")
    @click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
    def command(model: str, n: int, split: str, renderer: str, no_progress: bool) -> None:
        from latentlm.data.rendered import render_scenes
        from latentlm.evaluation import understanding
        from latentlm.evaluation.plain_renderer import render_plain
        from latentlm.model import LatentLM

        render = render_plain if renderer == "plain" else render_scenes
        report = getattr(understanding, fn)(LatentLM.from_pretrained(model), n=n, split=split,
                                            progress=not no_progress, render=render)
        click.echo(json.dumps(report | {"renderer": renderer}, indent=2))

    return command


_eval_understanding("caption", "eval_caption", 200, "Caption accuracy: every object's colour, shape, size and relation")
_eval_understanding("vqa", "eval_vqa", 420, "Question answering accuracy, per question kind")
_eval_understanding("ground", "eval_ground", 200, "Phrase grounding and grounded captions at IoU >= 0.5")


from latentlm.cli.chat import chat_cmd  # noqa: E402 - `latentlm chat`

cli.add_command(chat_cmd)
from latentlm.cli.workflow_commands import register as _register_workflow_commands  # noqa: E402

_register_workflow_commands(cli)
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2; older click exits 0 itself


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors -> one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="latentlm", standalone_mode=False)
    except _NO_ARGS as e:  # a bare `latentlm` (or group): its help, not an error
        click.echo(e.ctx.get_help())
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())} (see 'latentlm --help')", err=True)
        sys.exit(2)
    except (LatentLMError, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
