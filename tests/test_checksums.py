"""Checksums of saved checkpoints: each save records the SHA-256 of its files in checksums.json, and a
load whose file differs (even with its size and header kept) fails with one line naming the file."""

import json
import shutil
from pathlib import Path

import pytest

from latentlm.checkpoint import CHECKSUMS_FILE, PRETRAINED_DIR, load_codec
from latentlm.cli.main import main
from latentlm.errors import CheckpointError
from latentlm.model import LatentLM


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model, free to corrupt."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def overwrite_middle(path: Path, n: int = 200_000) -> None:
    """Overwrite up to `n` bytes in the middle of the file with 0xFF, keeping its size and its header."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little") if path.suffix == ".safetensors" else 64
    n = min(n, (len(data) - header) // 2)
    start = header + (len(data) - header - n) // 2
    data[start:start + n] = b"\xff" * n
    path.write_bytes(bytes(data))


def assert_one_line_error(directory: Path, name: str) -> None:
    with pytest.raises(CheckpointError) as info:
        LatentLM.from_pretrained(directory)
    message = str(info.value)
    assert "\n" not in message and name in message and "SHA-256" in message and "--no-verify" in message


def test_a_save_records_every_file(model_copy):
    sums = json.loads((model_copy / CHECKSUMS_FILE).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= set(sums)
    assert all(len(v) == 64 for v in sums.values())
    codec = next(p for p in model_copy.iterdir() if p.is_dir())
    assert "model.safetensors" in json.loads((codec / CHECKSUMS_FILE).read_text())


def test_weights_overwritten_in_the_middle_are_caught(model_copy):
    weights = model_copy / "model.safetensors"
    size, head = weights.stat().st_size, weights.read_bytes()[:64]
    overwrite_middle(weights)
    assert weights.stat().st_size == size and weights.read_bytes()[:64] == head
    assert_one_line_error(model_copy, "model.safetensors")


def test_an_edited_config_is_caught(model_copy):
    config = model_copy / "config.json"
    config.write_text(config.read_text().replace("\n", " \n", 1))  # still valid JSON, same meaning
    assert_one_line_error(model_copy, "config.json")


def test_an_edited_tokenizer_is_caught(model_copy):
    overwrite_middle(model_copy / "tokenizer.model", 16)
    assert_one_line_error(model_copy, "tokenizer.model")


def test_a_corrupt_codec_is_caught(model_copy):
    codec = next(p for p in model_copy.iterdir() if p.is_dir())
    overwrite_middle(codec / "model.safetensors", 1000)
    with pytest.raises(CheckpointError, match="model.safetensors does not match its recorded SHA-256"):
        load_codec(codec)


def test_verify_false_skips_the_check(model_copy):
    config = model_copy / "config.json"
    config.write_text(config.read_text() + "\n")
    assert LatentLM.from_pretrained(model_copy, verify=False).num_parameters() > 0


def test_no_verify_on_the_cli_loads(model_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTLM_NO_VERIFY", "0")  # restored after the test: --no-verify sets it to 1
    config = model_copy / "config.json"
    config.write_text(config.read_text() + "\n")
    with pytest.raises(SystemExit) as info:
        main(["export", str(model_copy), "-o", str(tmp_path / "a"), "--dtype", "float32"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json does not match its recorded SHA-256" in err
    main(["export", str(model_copy), "-o", str(tmp_path / "b"), "--dtype", "float32", "--no-verify"])
    assert (tmp_path / "b" / CHECKSUMS_FILE).is_file()  # the re-save records fresh checksums


def test_a_checkpoint_without_a_manifest_loads(model_copy):
    for manifest in model_copy.rglob(CHECKSUMS_FILE):
        manifest.unlink()
    config = model_copy / "config.json"
    config.write_text(config.read_text() + "\n")
    assert LatentLM.from_pretrained(model_copy).num_parameters() > 0
    assert LatentLM.from_pretrained("shapes-tiny").num_parameters() > 0
