"""The CLI: PNG output, --help examples, and user errors as exit 2 with one line, no traceback."""
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from latentlm.cli.main import cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentlm.cli", *args], capture_output=True, text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_writes_a_64x64_png(tiny_model_dir, tmp_path):
    out = tmp_path / "sub" / "out.png"
    proc = run_cli("generate", "--modality", "image", "--prompt", "a red circle above a blue square",
                   "--steps", "3", "--seed", "1", "--model", str(tiny_model_dir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
    assert not list(out.parent.glob(".*.tmp"))


def test_every_command_has_help_with_an_example():
    def walk(group, path):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, path + [name])
            else:
                yield path + [name]

    commands = list(walk(cli, []))
    assert ["generate"] in commands and ["eval", "t2i"] in commands and ["data", "shapes"] in commands
    for path in commands:
        proc = run_cli(*path, "--help")
        assert proc.returncode == 0 and ("Example:" in proc.stdout or "Examples:" in proc.stdout) and "latentlm " + " ".join(path) in proc.stdout


def test_top_level_help_lists_commands():
    proc = run_cli("--help")
    for name in ("generate", "train", "train-codec", "train-tokenizer", "data", "eval", "export"):
        assert name in proc.stdout


def test_empty_prompt(tiny_model_dir, tmp_path):
    assert_user_error(run_cli("generate", "--prompt", "  ", "--model", str(tiny_model_dir), "-o",
                              str(tmp_path / "x.png")), "prompt is empty")


def test_unknown_model(tmp_path):
    assert_user_error(run_cli("generate", "--prompt", "a red circle", "--model", "no-such-model", "-o",
                              str(tmp_path / "x.png")), "unknown model", "no-such-model")


@pytest.mark.parametrize("args,word", [
    (["--steps", "0"], "--steps"),
    (["--cfg", "-1"], "--cfg"),
    (["--modality", "smell"], "--modality"),
    (["--seed", "abc"], "--seed"),
    (["--temperature", "0"], "--temperature"),
])
def test_bad_option_values(tmp_path, args, word):
    assert_user_error(run_cli("generate", "--prompt", "a red circle", *args, "-o", str(tmp_path / "x.png")), word)


def test_missing_required_option():
    assert_user_error(run_cli("generate", "--prompt", "a red circle"), "--out")


def test_corrupt_checkpoint(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_user_error(run_cli("generate", "--prompt", "a red circle", "--model", str(broken), "-o",
                              str(tmp_path / "x.png")), "model.safetensors", "SHA-256", "corrupt")
    assert_user_error(run_cli("generate", "--prompt", "a red circle", "--model", str(broken), "--no-verify", "-o",
                              str(tmp_path / "x.png")), "model.safetensors", "truncated or corrupt")
    assert not (tmp_path / "x.png").exists()


def test_missing_config_in_checkpoint(tiny_model_dir, tmp_path):
    broken = tmp_path / "noconfig"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()
    assert_user_error(run_cli("generate", "--prompt", "a red circle", "--model", str(broken), "-o",
                              str(tmp_path / "x.png")), "config.json")


def test_invalid_yaml_reports_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer: t.model\ncodec: c\ntrain:\n  steps: [1, 2\n")
    assert_user_error(run_cli("train", str(bad), "-o", str(tmp_path / "run")), "line")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("tokenizer: t.model\ncodec: c\ntrain:\n  steps: -3\n")
    assert_user_error(run_cli("train", str(wrong), "-o", str(tmp_path / "run")), "line 4", "train.steps")


def test_data_shapes_command(tmp_path):
    proc = run_cli("data", "shapes", "--n", "3", "-o", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "d").glob("*.png"))) == 3
    assert len((tmp_path / "d" / "manifest.jsonl").read_text().splitlines()) == 3
