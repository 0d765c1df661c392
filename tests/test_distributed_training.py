"""Training under several processes and faults (issue 22): batches sharded by rank, one process unchanged,
exact resume, atomic checkpoints with checksums, a full disk, corrupt files, and resuming with another
process count. Multi-process runs are marked slow (each spawns processes that import torch)."""
from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_lm_config
from dist_helpers import RegressionTask, fail, regression_config, train_regression, two_process_checks
from latentlm.checkpoint import CHECKSUMS_FILE, verify_dir
from latentlm.cli.main import main
from latentlm.config_io import load_yaml_config
from latentlm.data.in_context import demonstration
from latentlm.errors import CheckpointError, ConfigError
from latentlm.sequence import Text, collate
from latentlm.training.checkpoints import checkpoints
from latentlm.training.codec import AudioCodecTask, CodecTrainConfig, ImageCodecTask, SpeechClips
from latentlm.training.launch import launch
from latentlm.training.lm import LatentLMTask, LMTrainConfig, check_world, train_lm
from latentlm.training.trainer import shard

BATCH_FIELDS = ("ids", "latents", "is_latent", "slot", "valid", "latent_target", "modality", "audio_stop")


# ---- the batches of one process are today's ------------------------------------------------------------
def todays_lm_batch(task: LatentLMTask, step: int, batch_size: int):
    """LatentLMTask.batch as it was before sharding (commit f38b478), kept verbatim as the reference: a run
    started before sharding must see the same batches when it resumes."""
    n = task.config.data.n_train
    key = step + task.config.train.seed * 1_000_003
    rng = random.Random(key)
    gen = torch.Generator().manual_seed(key)
    icl = task.config.data.icl
    if icl.every and step % icl.every == icl.every - 1:
        return todays_in_context_batch(task, max(1, batch_size // icl.batch_divisor), rng, gen)
    first = task.config.train.seed * 7_919
    idx = torch.tensor([(first + step * batch_size + j) % n for j in range(batch_size)])
    mu = task.mu[idx]
    sampled = task.codec.normalize(task.codec.perturb(mu, gen))
    means = task.codec.normalize(mu)
    tasks = rng.choices(task.task_names, task.task_weights, k=batch_size)
    seqs = [task._utterance(first + step * batch_size + j, rng, gen) if name == "tts"
            else task._sequence(name, task.scenes[i], sampled[j], means[j], rng)
            for j, (i, name) in enumerate(zip(idx.tolist(), tasks))]
    return collate(seqs, task.model.config.latent_width, task.tokenizer.pad_id)


def todays_in_context_batch(task: LatentLMTask, size: int, rng: random.Random, gen: torch.Generator):
    tok, n, icl = task.tokenizer, task.config.data.n_train, task.config.data.icl
    names = [t for t in task.task_names if t != "tts"]
    weights = [task.config.data.tasks[t] for t in names]
    seqs = []
    for name in rng.choices(names, weights, k=size):
        picks = rng.sample(range(n), rng.randint(*icl.demos) + 1)
        i = picks[-1]
        sampled = task.codec.normalize(task.codec.perturb(task.mu[i][None], gen))[0]
        query, key = task._query(name, task.scenes[i], sampled, task.codec.normalize(task.mu[i]), rng)
        demos = [seg for j in picks[:-1]
                 for seg in demonstration(key, task.scenes[j], task.codec.normalize(task.mu[j]), tok, rng)]
        seqs.append([Text([tok.bos_id]), *demos, Text(query[0].ids[1:]), *query[1:]])
    return collate(seqs, task.model.config.latent_width, tok.pad_id)


@pytest.fixture(scope="module")
def mixed_task(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir) -> LatentLMTask:
    """A tiny LM task drawing several tasks per batch, every third batch an in-context one."""
    path = tmp_path_factory.mktemp("mixed") / "lm.yaml"
    path.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 64, tasks: {{t2i: 0.4, caption: 0.2, vqa: 0.2, ground: 0.2}}, icl: {{every: 3, batch_divisor: 4}}}}
train: {{steps: 1, batch_size: 8, seed: 1}}
""")
    return LatentLMTask(load_yaml_config(path, LMTrainConfig), path.parent)


def test_one_process_sees_todays_lm_batches(mixed_task):
    for step in range(6):  # steps 2 and 5 are in-context batches
        new, old = mixed_task.batch(step, 8), todays_lm_batch(mixed_task, step, 8)
        for field in BATCH_FIELDS:
            assert torch.equal(getattr(new, field), getattr(old, field)), (step, field)
        again = mixed_task.batch(step, 8, rank=0, world=1)
        assert all(torch.equal(getattr(again, f), getattr(old, f)) for f in BATCH_FIELDS)


def test_shards_of_a_global_batch_give_the_whole_batch_gradient(mixed_task):
    """Two shards' losses (each its share of the global mean, its rows' own noise), averaged as DDP does,
    have the gradient of the whole batch in one process: different rows per shard hold different numbers
    of text tokens and latents, which a per-shard mean would weigh wrongly."""
    model = mixed_task.model

    def gradient(batch) -> torch.Tensor:
        model.zero_grad()
        model.loss(batch)[0].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    for step in (0, 2):  # a mixture batch and an in-context batch
        whole = gradient(mixed_task.batch(step, 8))
        shards = [mixed_task.batch(step, 8, rank=r, world=2) for r in (0, 1)]
        assert shards[0].loss_counts == shards[1].loss_counts
        halves = (gradient(shards[0]) + gradient(shards[1])) / 2
        assert relative_error(whole, halves) <= 1e-5, step


def test_passes_of_similar_length_give_the_whole_batch_loss_and_gradient(mixed_task, monkeypatch):
    """The task's loss in passes of a few rows of similar length (less padding) equals one pass over the batch."""
    import latentlm.training.lm as lm

    monkeypatch.setattr(lm, "ROWS_PER_PASS", 3)
    model = mixed_task.model

    def step_of(loss_fn, batch):
        model.zero_grad()
        loss, logs = loss_fn(batch)
        loss.backward()
        return loss.item(), logs, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    for step in (0, 1, 2):  # mixture batches and an in-context batch (2 rows: one pass)
        batch = mixed_task.batch(step, 8)
        parts = batch.passes(3)
        assert sum(len(p.valid) for p in parts) == len(batch.valid)
        assert all(p.valid[:, 0].any() for p in parts)  # each pass cut to its longest row
        one = step_of(model.loss, batch)
        passes = step_of(lambda b: mixed_task.loss(model, b), batch)
        assert passes[0] == pytest.approx(one[0], rel=1e-5)
        assert passes[1] == pytest.approx(one[1], rel=1e-4)
        assert relative_error(one[2], passes[2]) <= 1e-5, step


def audio_task(seed: int = 0) -> AudioCodecTask:
    """An audio codec task on five synthetic utterances (no speech synthesis), with a stand-in model."""
    config = CodecTrainConfig.model_validate({"kind": "audio_sigma_vae", "data": {"crop_seconds": [0.1, 0.3]},
                                              "train": {"seed": seed}})
    task = AudioCodecTask.__new__(AudioCodecTask)
    task.config, task.model = config, SimpleNamespace(hop_length=160, sample_rate=16_000)
    lengths = [1600, 3000, 4000, 2500, 6000]
    waves = np.random.default_rng(0).integers(-3000, 3000, sum(lengths)).astype(np.int16)
    task.clips = SpeechClips(waves, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    return task


def test_one_process_sees_todays_codec_batches():
    from latentlm.data.rendered import shapes_images

    image = ImageCodecTask.__new__(ImageCodecTask)
    image.config = CodecTrainConfig.model_validate({"kind": "image_sigma_vae", "data": {"n_train": 10}})
    audio = audio_task()
    for step in range(3):
        assert torch.equal(image.batch(step, 4), shapes_images("train", [(step * 4 + j) % 10 for j in range(4)]))
        rng = np.random.default_rng([0, step])  # today's AudioCodecTask.batch, verbatim
        assert torch.equal(audio.batch(step, 4), audio.clips.crops(rng, 4, audio.crop_length(rng)))


def rows(batch, field: str) -> list[torch.Tensor]:
    """Each row's values at its valid positions (collate pads each shard to its own length)."""
    values = getattr(batch, field)
    return [values[r][batch.valid[r]] for r in range(values.shape[0])]


def test_two_shards_make_the_global_batch(mixed_task):
    for step in (0, 2):  # a mixed batch and an in-context one
        whole = mixed_task.batch(step, 8)
        parts = [mixed_task.batch(step, 8, rank, 2) for rank in range(2)]
        for field in ("ids", "latents", "latent_target"):
            together = rows(parts[0], field) + rows(parts[1], field)
            assert len(together) == len(rows(whole, field))
            assert all(torch.equal(a, b) for a, b in zip(together, rows(whole, field))), (step, field)
    audio = audio_task()
    assert torch.equal(torch.cat([audio.batch(1, 4, r, 2) for r in range(2)]), audio.batch(1, 4))
    task = RegressionTask()
    assert torch.equal(torch.cat([task.batch(3, 8, r, 4) for r in range(4)]), task.batch(3, 8))


def test_a_batch_that_does_not_split_is_a_clear_error(mixed_task):
    with pytest.raises(ConfigError, match="a batch of 8 rows does not split over 3 processes"):
        shard(list(range(8)), 0, 3)
    with pytest.raises(ConfigError, match="train.batch_size 8 does not split over 3 processes"):
        check_world(mixed_task.config, 3)
    with pytest.raises(ConfigError, match="in-context batches of 2 sequences do not split over 4 processes"):
        check_world(mixed_task.config, 4)
    check_world(mixed_task.config, 2)


# ---- exact resume, checkpoint layout --------------------------------------------------------------------
def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def losses(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def as_saved_before_checksums(ckpt: Path) -> None:
    """Turn a checkpoint into the layout of the trainer before this issue: no manifest, trainer.json = {step}."""
    step = json.loads((ckpt / "trainer.json").read_text())["step"]
    (ckpt / CHECKSUMS_FILE).unlink()
    (ckpt / "trainer.json").write_text(json.dumps({"step": step}))


def test_stops_at_random_steps_then_resume_is_bit_identical(tmp_path, tiny_tokenizer_path, tiny_codec_dir, capsys):
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=14)
    straight = train_lm(config, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    first = random.Random(22).randint(1, 9)  # not a multiple of save_every (10)
    ckpt = train_lm(config, run, stop_after=first, progress=False)
    assert ckpt.name == f"step_{first:07d}"
    saved = json.loads((ckpt / "trainer.json").read_text())
    assert saved == {"world_size": 1, "distributed": "ddp", "step": first}
    assert set(json.loads((ckpt / CHECKSUMS_FILE).read_text())) >= {"model.safetensors", "optimizer.bin",
                                                                     "scheduler.bin", "random_states_0.pkl",
                                                                     "trainer.json"}
    task_keys = set(LatentLMTask(load_yaml_config(config, LMTrainConfig), run).model.state_dict())
    assert set(weights(ckpt)) == task_keys  # the plain model's keys, as checkpoints were always saved
    as_saved_before_checksums(ckpt)
    second = train_lm(config, run, resume=True, max_minutes=1e-9, progress=False)  # out of time after one step
    assert second.name == f"step_{first + 1:07d}"
    final = train_lm(config, run, resume=True, progress=False)
    a, b = weights(straight), weights(final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "straight") == losses(run)
    assert f"resuming from {run / 'checkpoints' / f'step_{first + 1:07d}'}" in capsys.readouterr().err


def test_end_step_takes_the_run_off_part_way_through_its_schedule(tmp_path):
    whole = train_regression(tmp_path / "whole", steps=20, save_every=5)
    part = train_regression(tmp_path / "part", steps=20, end_step=15, save_every=5)
    assert part == tmp_path / "part" / "final" and whole == tmp_path / "whole" / "final"
    # the same schedule (cosine over 20 steps) up to step 15: the same losses and the same weights there
    assert losses(tmp_path / "part") == losses(tmp_path / "whole")[:15]
    a, b = (weights(run / "checkpoints" / "step_0000015") for run in (tmp_path / "whole", tmp_path / "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="end_step 25 is past the schedule's 20 steps"):
        regression_config(steps=20, end_step=25)


def test_resume_ignores_unfinished_saves(tmp_path, capsys):
    straight = train_regression(tmp_path / "straight", steps=20)
    run = tmp_path / "run"
    train_regression(run, stop_after=10, steps=20)
    root = run / "checkpoints"
    for leftover in (".tmp-step_0000015", "step_0000015.tmp"):  # a save cut short, by this trainer and the last
        (root / leftover).mkdir()
        (root / leftover / "model.safetensors").write_bytes(b"half")
    (run / ".final.abc123").mkdir()  # an export cut short
    assert [p.name for p in checkpoints(run)] == ["step_0000010"]
    final = train_regression(run, resume=True, steps=20)
    assert f"resuming from {root / 'step_0000010'}" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["step_0000020"] or \
        sorted(p.name for p in root.iterdir()) == ["step_0000010", "step_0000020"]
    assert not (run / ".final.abc123").exists()
    a, b = weights(straight), weights(final)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- faults: one line, naming the file ---------------------------------------------------------------------
def user_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with one stderr line, no traceback. Returns that line."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("resuming from")]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = max(1, len(data) // 4)
    data[len(data) // 2 - n // 2: len(data) // 2 - n // 2 + n] = b"\xff" * n
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture
def stopped_run(tmp_path, tiny_tokenizer_path, tiny_codec_dir) -> tuple[Path, Path]:
    """(config, run) of the tiny LM stopped at step 10 of 20 (a checkpoint at 10)."""
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=20)
    train_lm(config, tmp_path / "run", stop_after=10, progress=False)
    return config, tmp_path / "run"


def test_corrupt_training_checkpoints_name_the_file(stopped_run, capsys):
    config, run = stopped_run
    ckpt = run / "checkpoints" / "step_0000010"
    cases = [("model.safetensors", overwrite_middle), ("optimizer.bin", truncate), ("trainer.json", truncate)]
    for name, damage in cases:
        original = (ckpt / name).read_bytes()
        damage(ckpt / name)
        line = user_error(capsys, "train", str(config), "-o", str(run), "--resume", "--no-progress")
        assert str(ckpt / name) in line and "SHA-256" in line, line
        (ckpt / name).write_bytes(original)
    (ckpt / "scheduler.bin").unlink()
    line = user_error(capsys, "train", str(config), "-o", str(run), "--resume", "--no-progress")
    assert str(ckpt / "scheduler.bin") in line and "missing" in line


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_previous_checkpoint(stopped_run, capsys, monkeypatch):
    config, run = stopped_run
    monkeypatch.setattr(torch, "save", no_space)  # accelerate writes the optimizer and RNG files with it
    line = user_error(capsys, "train", str(config), "-o", str(run), "--resume", "--no-progress")
    assert line == (f"error: could not save the checkpoint of step 20 in {run / 'checkpoints'} (No space left on "
                    "device); step_0000010 is intact: free space and continue with --resume")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000010"]  # no temporary left
    verify_dir(run / "checkpoints" / "step_0000010")
    monkeypatch.undo()
    final = train_lm(config, run, resume=True, stop_after=10, progress=False)
    assert final == run / "final"


def test_a_full_disk_during_the_export_keeps_the_checkpoint(stopped_run, capsys, monkeypatch):
    import latentlm.checkpoint

    config, run = stopped_run
    train_lm(config, run, resume=True, stop_after=9, progress=False)  # step 19
    monkeypatch.setattr(latentlm.checkpoint, "save_file", no_space)  # the export's weights
    line = user_error(capsys, "train", str(config), "-o", str(run), "--resume", "--no-progress")
    assert line == (f"error: could not export the model to {run / 'final'} (No space left on device); the run's "
                    "last checkpoint is intact: free space and continue with --resume")
    assert not (run / "final").exists() and not list(run.glob(".final*"))
    verify_dir(run / "checkpoints" / "step_0000020")
    monkeypatch.undo()
    assert train_lm(config, run, resume=True, progress=False) == run / "final"


@pytest.mark.parametrize("name,damage", [("model.safetensors", overwrite_middle), ("config.json", truncate),
                                         ("tokenizer.model", truncate)])
def test_export_names_a_corrupt_file(tiny_model_dir, tmp_path, capsys, monkeypatch, name, damage):
    monkeypatch.setenv("LATENTLM_NO_VERIFY", "0")  # restored after the test: --no-verify sets it
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    damage(model / name)
    line = user_error(capsys, "export", str(model), "-o", str(tmp_path / "out"))
    assert str(model / name) in line and "SHA-256" in line
    if name != "model.safetensors":  # overwritten in place, the weights still parse: only the checksum tells
        line = user_error(capsys, "export", str(model), "-o", str(tmp_path / "out"), "--no-verify")
        assert name in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,damage", [("model.safetensors", overwrite_middle), ("config.json", truncate)])
def test_init_from_names_a_corrupt_file(tiny_model_dir, tmp_path, tiny_tokenizer_path, tiny_codec_dir, capsys,
                                        name, damage):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    damage(model / name)
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=2)
    config.write_text(config.read_text() + f"init_from: {model}\n")
    line = user_error(capsys, "train", str(config), "-o", str(tmp_path / "run"), "--no-progress")
    assert str(model / name) in line, line


# ---- several processes (slow: each launch spawns processes that import torch) ---------------------------
def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.slow
def test_two_processes_with_half_the_batch_match_one_process(tmp_path):
    one = weights(train_regression(tmp_path / "one"))
    seen = launch(two_process_checks, (tmp_path,), num_processes=2)
    two = weights(seen["final"])
    errors = {k: relative_error(one[k], two[k]) for k in one}
    assert max(errors.values()) <= 1e-5, errors
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 31))  # one writer
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000030"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2
    assert "train.batch_size 7 does not split over 2 processes" in seen["errors"]["odd_batch"]
    assert seen["errors"]["fsdp"].startswith("ConfigError: train.distributed: fsdp needs GPUs")


@pytest.mark.slow
def test_two_processes_train_the_latentlm_as_one_does(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    """The bar of issue 22 on the real model: 30 steps of a tiny LatentLM (a mixture of tasks, in-context
    batches among them), 2 processes with half the batch each vs 1 process, fp32 on CPU."""
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=30)
    one = weights(train_lm(config, tmp_path / "one", progress=False))
    two = weights(train_lm(config, tmp_path / "two", num_processes=2, progress=False))
    errors = {k: relative_error(one[k], two[k]) for k in one}
    assert max(errors.values()) <= 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.slow
def test_fsdp_trains_on_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("FSDP is not tested on CPU: accelerate 1.16 applies its FSDP plugin only to GPU-like process "
                    "groups (MULTI_GPU, ...), not to gloo on CPUs, so there the trainer refuses "
                    "train.distributed: fsdp (checked by test_two_processes_with_half_the_batch_match_one_process); "
                    "this needs 2 GPUs")
    one = weights(train_regression(tmp_path / "one"))
    fsdp = weights(launch(train_regression, (tmp_path / "fsdp",), {"distributed": "fsdp"}, num_processes=2))
    assert max(relative_error(one[k], fsdp[k]) for k in one) <= 1e-5


@pytest.mark.slow
def test_resume_with_one_then_two_then_one_process(tmp_path, tiny_tokenizer_path, tiny_codec_dir, capsys):
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=12)
    config.write_text(config.read_text().replace("save_every: 10", "save_every: 4"))
    run = tmp_path / "run"
    train_lm(config, run, stop_after=4, progress=False)
    ckpt = train_lm(config, run, resume=True, stop_after=4, num_processes=2, progress=False)
    assert ckpt == run / "checkpoints" / "step_0000008"
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
    capsys.readouterr()
    final = train_lm(config, run, resume=True, progress=False)
    assert f"resuming from {ckpt} (saved by 2 process(es), now 1)" in capsys.readouterr().err
    assert [step for step, _ in losses(run)] == list(range(1, 13))  # each step logged once, by one process
    assert all(np.isfinite(loss) for _, loss in losses(run))
    from latentlm.model import LatentLM

    assert LatentLM.from_pretrained(final).num_parameters() > 0


@pytest.mark.slow
def test_train_codec_with_two_processes(tmp_path, capsys):
    from latentlm.checkpoint import load_codec

    config = tmp_path / "vae.yaml"
    config.write_text("""kind: image_sigma_vae
codec: {latent_dim: 8, block_out_channels: [16, 16, 16, 16], norm_num_groups: 8}
data: {n_train: 8}
stats_images: 16
train: {steps: 4, batch_size: 4, warmup_steps: 1, log_every: 1, save_every: 2}
""")
    main(["train-codec", str(config), "-o", str(tmp_path / "run"), "--num-processes", "2", "--no-progress"])
    assert capsys.readouterr().out == f"{tmp_path / 'run' / 'final'}\n"  # printed once
    assert [step for step, _ in losses(tmp_path / "run")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "checkpoints" / "step_0000004" / "trainer.json").read_text())[
        "world_size"] == 2
    assert load_codec(tmp_path / "run" / "final").latent_dim == 8


def test_num_processes_on_the_cli_launches(monkeypatch, tmp_path):
    """`--num-processes N` hands the same call to the launcher (which the slow tests run for real)."""
    import latentlm.training.lm as lm

    calls = []
    monkeypatch.setattr(lm, "launch", lambda fn, args, kwargs, n: calls.append((fn, args, kwargs, n)) or "done")
    main(["train", "cfg.yaml", "-o", str(tmp_path / "run"), "--num-processes", "2", "--no-progress"])
    assert calls == [(lm.train_lm, (Path("cfg.yaml"), tmp_path / "run"),
                      {"resume": False, "backbone": None, "max_minutes": None, "progress": False,
                       "export_to": None}, 2)]


@pytest.mark.slow
def test_a_launched_process_that_fails_fails_the_launch():
    with pytest.raises(ConfigError, match="^train.steps: rank 1 says no$"):  # the user error itself, one line
        launch(fail, ("user",), num_processes=2)
    with pytest.raises(RuntimeError, match=r"training process \d failed \(see its output above\)"):
        launch(fail, ("bug",), num_processes=2)


def test_launching_inside_a_launched_process_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun or accelerate launch leave it out"):
        launch(print, num_processes=2)
