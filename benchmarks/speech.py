"""Speech quality (issue 19): our text-to-speech against the codec-token baseline, and the two codecs.

Sampling settings -- our DPM-Solver++ steps x CFG x temperature, the baseline's temperature -- are chosen on the val
split; every reported figure is on the test split, used once. Run it on an idle machine: the real-time
factors are timings.

    .venv/bin/python benchmarks/speech.py --model runs/shapes-tiny-6/final --baseline runs/speech-valle/final
    .venv/bin/python benchmarks/speech.py --model M --baseline B --quick   # a smoke run: prints only
    .venv/bin/python benchmarks/speech.py --codecs-only --vae speech-vae --tokenizer speech-encodec   # the codecs alone
"""
from __future__ import annotations

import argparse
import json

import torch
from report import machine, table, write_section
from torch import Tensor, nn

from latentlm.codecs.audio_sigma_vae import AudioReconstructionLoss
from latentlm.codec_lm_speech import DEFAULT_TOP_K
from latentlm.evaluation.audio_codec import codec_rates
from latentlm.evaluation.tts import eval_tts, load_tts_model

# steps x CFG x temperature (the starting noise's scale: below 1 speaks nearer the mode, and drifts less)
OUR_SWEEP = [(steps, cfg, temperature) for steps in (5, 10) for cfg in (2.0, 3.0, 4.0) for temperature in (1.0, 0.7)]
BASELINE_SWEEP = (0.7, 1.0)  # temperatures of the AR's logits (top-k 50)
ORIGINAL = "original audio"
VAE_AS_TRAINED = "sigma-VAE, fp16 latents"
LATENT_RANGE = 4.0  # rounded latents live on [-4, 4] in the normalised (unit-variance) space


def score(report: dict) -> tuple[float, float]:
    """Higher is better: grammar-exact intelligibility, then a lower MCD."""
    return report["grammar_exact"], -report["mcd_db"]


def choose_ours(model, n: int, sweep=OUR_SWEEP) -> tuple[tuple[int, float, float], str]:
    """Steps x CFG x temperature of our model on the val split (seed 0)."""
    rows, reports = [], {}
    for steps, cfg, temperature in sweep:
        r = eval_tts(model, n, "val", steps=steps, cfg_scale=cfg, temperature=temperature, seed=0, progress=False)
        reports[(steps, cfg, temperature)] = r
        rows.append([steps, cfg, temperature, f"{100 * r['grammar_exact']:.1f}%", f"{r['mcd_db']:.2f}", f"{r['wer']:.3f}",
                     f"{100 * r['duration_within_20pct']:.0f}%", f"{r['real_time_factor']:.3f}"])
    best = max(reports, key=lambda k: score(reports[k]))
    text = (f"### Our sampling settings, chosen on the val split ({n} sentences, seed 0)\n\n"
            + table(["steps", "CFG", "temperature", "grammar exact", "MCD (dB)", "WER", "duration +-20%", "RTF"], rows)
            + f"\n\nChosen: {best[0]} steps, CFG {best[1]}, temperature {best[2]} (best grammar-exact, then MCD).\n")
    return best, text


def choose_baseline(model, n: int, sweep=BASELINE_SWEEP) -> tuple[float, str]:
    """The baseline's sampling temperature on the val split (seed 0, top-k 50)."""
    rows, reports = [], {}
    for temperature in sweep:
        r = eval_tts(model, n, "val", temperature=temperature, top_k=DEFAULT_TOP_K, seed=0, progress=False)
        reports[temperature] = r
        rows.append([temperature, f"{100 * r['grammar_exact']:.1f}%", f"{r['mcd_db']:.2f}", f"{r['wer']:.3f}",
                     f"{r['real_time_factor']:.3f}"])
    best = max(reports, key=lambda k: score(reports[k]))
    text = (f"### The baseline's temperature, chosen on the val split ({n} sentences, seed 0, top-k {DEFAULT_TOP_K})\n\n"
            + table(["temperature", "grammar exact", "MCD (dB)", "WER", "RTF"], rows)
            + f"\n\nChosen: temperature {best}.\n")
    return best, text


class RoundedLatents(nn.Module):
    """A sigma-VAE whose normalised latent means are rounded to `bits` bits each on [-4, 4]: the sigma-VAE at
    a bitrate we choose, to compare with a tokenizer at the same bits a second."""

    def __init__(self, vae: nn.Module, bits: int) -> None:
        super().__init__()
        self.vae, self.bits = vae, bits

    @torch.no_grad()
    def reconstruct(self, wav: Tensor) -> Tensor:
        z = self.vae.normalize(self.vae.encode(wav)).clamp(-LATENT_RANGE, LATENT_RANGE)  # [B, N, D]
        step = 2 * LATENT_RANGE / (2**self.bits - 1)
        z = torch.round((z + LATENT_RANGE) / step) * step - LATENT_RANGE
        return self.vae.decode(self.vae.denormalize(z))[:, : wav.shape[-1]]

    @property
    def bits_per_second(self) -> float:
        return self.vae.floats_per_second * self.bits


@torch.no_grad()
def codec_round_trip(codecs: dict[str, tuple[nn.Module, float]], n: int) -> list[dict]:
    """Mel distance, MCD-DTW and grammar-exact intelligibility of each codec's round trip on the first `n` test
    items; first the original audio, then (for the MCD's scale) the same words in another espeak-ng voice.
    One dict per row: codec, bits (a second, None where it has no meaning), mel, mcd_db, grammar_exact."""
    from latentlm.data.speech import VOICES, speak, speech_item, speech_text
    from latentlm.evaluation.speech_metrics import Recognizer, mcd_dtw

    items = [speech_item("test", i) for i in range(n)]
    waves = [torch.from_numpy(wav) for _, _, wav in items]
    heard, metric = Recognizer(grammar=True), AudioReconstructionLoss()
    shapes = [i for i in range(n) if speech_text("test", i)[1] == "shapes"]

    def row(name: str, bits: float | None, out: list[Tensor], mel: float | None) -> dict:
        mcd = sum(mcd_dtw(o.numpy(), w.numpy()) for o, w in zip(out, waves)) / n
        exact = sum(heard(out[i].numpy()) == items[i][0] for i in shapes) / len(shapes)
        return dict(codec=name, bits=bits, mel=mel, mcd_db=mcd, grammar_exact=exact)

    rows = [row(ORIGINAL, 256_000, waves, 0.0)]
    others = [torch.from_numpy(speak(text, VOICES[(VOICES.index(voice) + 1) % len(VOICES)])) for text, voice, _ in items]
    rows.append(row("(scale: the same words in another espeak-ng voice)", None, others, None))
    for name, (codec, bits) in codecs.items():
        out = [codec.reconstruct(w[None])[0].clamp(-1, 1) for w in waves]
        mel = sum(metric.mel_distance(o[None], w[None]).item() for o, w in zip(out, waves)) / n
        rows.append(row(name, bits, out, mel))
    return rows


def codec_table_rows(rows: list[dict]) -> list[list[str]]:
    """The round trip's dicts as table rows."""
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)
    return [[r["codec"], num(r["bits"], ",.0f"), num(r["mel"], ".3f"), f"{r['mcd_db']:.2f}",
             f"{100 * r['grammar_exact']:.1f}%"] for r in rows]


class FirstCodebooks(nn.Module):
    """An EnCodec tokenizer that keeps only its first `n_q` codebooks (a lower bitrate)."""

    def __init__(self, tokenizer: nn.Module, n_q: int) -> None:
        super().__init__()
        self.tokenizer, self.n_q = tokenizer, n_q

    @torch.no_grad()
    def reconstruct(self, wav: Tensor) -> Tensor:
        return self.tokenizer.reconstruct(wav, self.n_q)


def audio_codecs(vae: nn.Module, tok: nn.Module | None) -> dict[str, tuple[nn.Module, float]]:
    """The codecs compared, with their bits a second: the sigma-VAE as trained (fp16 latents) and rounded to
    the tokenizer's bitrates (10 bits a float = 8 codebooks, 5 bits = 4 codebooks at 50 frames a second)."""
    codecs = {VAE_AS_TRAINED: (vae, codec_rates(vae)["bits_per_second"])}
    for bits in (10, 5):
        rounded = RoundedLatents(vae, bits)
        codecs[f"sigma-VAE, latents rounded to {bits} bits"] = (rounded, rounded.bits_per_second)
    if tok is not None:
        for n_q in (tok.n_q, tok.n_q // 2):
            codecs[f"EnCodec tokenizer, {n_q} codebooks"] = (FirstCodebooks(tok, n_q), tok.bitrate * n_q / tok.n_q)
    return codecs


def bars(ours: dict, base: dict | None, codec_rows: list[dict]) -> list[list]:
    rows = [
        ["intelligibility (grammar exact) vs espeak-ng's reference", ">= 90% of the reference",
         f"{100 * ours['grammar_exact']:.1f}% vs {100 * ours['grammar_exact_reference']:.1f}% "
         f"({100 * ours['intelligibility_vs_reference']:.0f}%)"],
        ["MCD-DTW against espeak-ng, same voice", "<= 6.0 dB", f"{ours['mcd_db']:.2f} dB"],
        ["duration within +-20% of espeak-ng's", ">= 95%", f"{100 * ours['duration_within_20pct']:.1f}%"],
        ["median F0 within 10% of the prompt speaker's, held-out voices", ">= 85%",
         f"{100 * ours['f0_within_10pct_held_out']:.1f}% (n = {ours['n_held_out_voice']})"],
        ["real-time factor, batch 1, fp32", "<= 0.3", f"{ours['real_time_factor']:.3f}"],
    ]
    if base is not None:
        rows += [
            ["AR steps per second of audio, baseline / ours", ">= 4x",
             f"{base['ar_steps_per_second']:.1f} / {ours['ar_steps_per_second']:.1f} = "
             f"{base['ar_steps_per_second'] / ours['ar_steps_per_second']:.1f}x"],
            ["intelligibility, ours vs the baseline", ">= the baseline's",
             f"{100 * ours['grammar_exact']:.1f}% vs {100 * base['grammar_exact']:.1f}%"],
            ["real-time factor, baseline / ours", ">= 2x",
             f"{base['real_time_factor']:.3f} / {ours['real_time_factor']:.3f} = "
             f"{base['real_time_factor'] / ours['real_time_factor']:.1f}x"],
        ]
    by_name = {r["codec"]: r for r in codec_rows}
    original, vae = (100 * by_name[name]["grammar_exact"] for name in (ORIGINAL, VAE_AS_TRAINED))
    rows.append(["sigma-VAE round trip: intelligibility vs the original audio", "within 3 points",
                 f"{vae:.1f}% vs {original:.1f}% ({vae - original:+.1f})"])
    return rows


def report_row(name: str, r: dict) -> list:
    return [name, f"{100 * r['grammar_exact']:.1f}%", f"{r['wer']:.3f}", f"{r['mcd_db']:.2f}",
            f"{100 * r['duration_within_20pct']:.0f}%", f"{100 * r['f0_within_10pct_held_out']:.0f}%",
            f"{r['real_time_factor']:.3f}", f"{r['ar_steps_per_second']:.1f}", f"{r['network_calls_per_second']:.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny", help="our LatentLM (with an audio codec)")
    ap.add_argument("--baseline", default=None, help="the codec-token baseline (latentlm train-baseline)")
    ap.add_argument("--val-n", type=int, default=30, help="val sentences per sweep setting")
    ap.add_argument("--test-n", type=int, default=60, help="test sentences reported")
    ap.add_argument("--codec-n", type=int, default=60, help="test utterances of the codec round trip")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 3 sentences, 2 settings; print, do not write BENCHMARKS.md")
    ap.add_argument("--codecs-only", action="store_true", help="only the codec round trip of --vae and --tokenizer")
    ap.add_argument("--vae", default="speech-vae", help="--codecs-only: the audio sigma-VAE (shipped name or folder)")
    ap.add_argument("--tokenizer", default="speech-encodec", help="--codecs-only: the EnCodec tokenizer (shipped name or folder)")
    args = ap.parse_args()
    if args.codecs_only:
        codecs_only(args)
        return
    ours_sweep, base_sweep = (OUR_SWEEP[:2], BASELINE_SWEEP[:1]) if args.quick else (OUR_SWEEP, BASELINE_SWEEP)
    if args.quick:
        args.val_n = args.test_n = args.codec_n = 3

    ours_model = load_tts_model(args.model)
    base_model = load_tts_model(args.baseline) if args.baseline else None
    (steps, cfg, temperature), our_text = choose_ours(ours_model, args.val_n, ours_sweep)
    ours = eval_tts(ours_model, args.test_n, "test", steps=steps, cfg_scale=cfg, temperature=temperature, seed=0,
                    progress=False)
    base, base_text = None, ""
    if base_model is not None:
        temperature, base_text = choose_baseline(base_model, args.val_n, base_sweep)
        base = eval_tts(base_model, args.test_n, "test", temperature=temperature, top_k=DEFAULT_TOP_K, seed=0,
                        progress=False)
    codec_rows = codec_round_trip(
        audio_codecs(ours_model.codecs["audio"], base_model.codecs["audio"] if base_model else None), args.codec_n)
    results = [report_row("ours (LatentLM, sigma-VAE latents)", ours)]
    if base is not None:
        results.append(report_row("baseline (VALL-E style, EnCodec codes)", base))
    body = f"""## Text-to-speech: our model against the codec-token baseline (issue 19)

Machine: {machine()}.

Ours: `{args.model}` ({steps} DPM-Solver++ steps, CFG {cfg}, temperature {temperature}); baseline: `{args.baseline or 'not given'}`. Each
test sentence is spoken with a voice prompt of its own speaker (another val utterance of that voice) and
compared with espeak-ng's rendering of the same text and voice. Settings were chosen on the val split
(below); these figures are on the first {args.test_n} test sentences (unseen texts), used once.

{table(["measure", "bar", "measured"], bars(ours, base, codec_rows))}

### Both models on the test split

{table(["model", "grammar exact", "WER", "MCD (dB)", "duration +-20%", "F0 +-10% (held-out voices)", "RTF",
        "AR steps / s of audio", "network calls / s of audio"], results)}

- Reference (espeak-ng) grammar-exact rate on these sentences: {100 * ours['grammar_exact_reference']:.1f}%
  ({ours['n_shapes']} shapes sentences); its WER with the general language model: {ours['wer_reference']:.3f}.
- Our diffusion-head calls per second of audio: {ours['head_calls_per_second']:.0f} (the guided and
  unguided streams share each call).

### Codec round trip (first {args.codec_n} test utterances)

{table(["codec", "bits / s", "mel distance", "MCD-DTW (dB)", "grammar exact"], codec_table_rows(codec_rows))}

{our_text}
{base_text}
Reproduce: `.venv/bin/python benchmarks/speech.py --model {args.model} --baseline {args.baseline or 'B'}`."""
    print(body)
    print(json.dumps({"ours": ours, "baseline": base, "codecs": codec_rows}, indent=1, default=str)[:3000])
    if not args.quick:
        write_section("speech", body)


def codecs_only(args) -> None:
    """The two codecs' round trip on the test split (no choice is made from it), into BENCHMARKS.md "speech-codecs"."""
    from latentlm.checkpoint import load_codec

    n = 3 if args.quick else args.codec_n
    rows = codec_round_trip(audio_codecs(load_codec(args.vae), load_codec(args.tokenizer)), n)
    body = f"""## Speech codecs: the sigma-VAE against the EnCodec tokenizer at equal bitrates (issue 19)

Machine: {machine()}.

`{args.vae}` (12.5 latents a second x 32 floats, fp16, and its latents rounded to 10 and 5 bits a float) and
`{args.tokenizer}` (50 frames a second x 8 codebooks of 1024, and its first 4), on the first {n} test
utterances, measured once. Grammar-exact: pocketsphinx under the shapes grammar, on the shapes sentences.

{table(["codec", "bits / s", "mel distance", "MCD-DTW (dB)", "grammar exact"], codec_table_rows(rows))}

Reproduce: `.venv/bin/python benchmarks/speech.py --codecs-only --vae {args.vae} --tokenizer {args.tokenizer}`."""
    print(body)
    if not args.quick:
        write_section("speech-codecs", body)


if __name__ == "__main__":
    main()
