"""User errors of the CLI and the Session: one `error: ...` line, exit 2, and no model work before it."""
from __future__ import annotations

import errno
import json
import math
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from latentlm.checkpoint import resolve_checkpoint
from latentlm.cli import main as cli_main
from latentlm.cli.main import check_picture_path, main, save_picture
from latentlm.errors import CheckpointError, LatentLMError
from latentlm.model import LatentLM
from latentlm.workflows.session import Session

FORMATS = ".png, .jpg, .jpeg, .webp, .bmp"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model (or the hub) is touched."""
    monkeypatch.setattr(LatentLM, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was asked"))


def user_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one stderr line starting 'error: '."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "white").save(path)
    return path


# ---- output paths -----------------------------------------------------------------------------
def test_generate_into_sys_is_refused_before_the_model(capsys, no_model):
    line = user_error(capsys, "generate", "--prompt", "a red circle", "-o", "/sys/x.png")
    assert line == ("error: cannot write --out /sys/x.png: /sys is a system folder, not a place for outputs; "
                    "choose another folder")
    assert ".tmp" not in line


def test_a_read_only_file_system_is_refused_before_the_model(capsys, no_model, monkeypatch, tmp_path):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    out = tmp_path / "ro" / "x.png"
    line = user_error(capsys, "generate", "--prompt", "a red circle", "-o", str(out))
    assert line == (f"error: cannot write --out {out}: {out.parent} is not writable (Read-only file system); "
                    "choose another folder")


def test_a_file_in_the_way(capsys, no_model, tmp_path):
    (tmp_path / "file").write_text("")
    line = user_error(capsys, "generate", "--prompt", "a red circle", "-o", str(tmp_path / "file" / "x.png"))
    assert line.endswith(f"{tmp_path / 'file'} is a file, not a folder")


def test_ground_draw_and_chat_use_the_same_check(capsys, no_model, scene):
    line = user_error(capsys, "ground", str(scene), "the circle", "--draw", "/sys/boxes.png")
    assert line.startswith("error: cannot write --draw /sys/boxes.png: /sys is a system folder")
    line = user_error(capsys, "ground", str(scene), "the circle", "--draw", "boxes.tiff")
    assert line == f"error: --draw boxes.tiff: unknown picture format '.tiff'; use one of {FORMATS}"
    line = user_error(capsys, "chat", "-o", "/proc/chat")
    assert line.startswith("error: cannot write --out /proc/chat: /proc is a system folder")


@pytest.mark.parametrize("name,shown", [("x.tiff", "'.tiff'"), ("x", "'(no suffix)'"), ("x.PNG.txt", "'.txt'")])
def test_an_unknown_suffix_lists_the_formats(capsys, no_model, tmp_path, name, shown):
    out = tmp_path / name
    line = user_error(capsys, "generate", "--prompt", "a red circle", "-o", str(out))
    assert line == f"error: --out {out}: unknown picture format {shown}; use one of {FORMATS}"
    assert not out.exists()


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP"),
                                        (".bmp", "BMP")])
def test_the_suffix_names_the_format(tmp_path, suffix, fmt):
    out = check_picture_path(tmp_path / "sub" / f"x{suffix}")
    save_picture(Image.new("RGBA", (16, 16), (255, 0, 0, 255)), out)
    with Image.open(out) as im:
        assert im.format == fmt and im.size == (16, 16)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary or test files left


def test_generate_writes_a_jpeg_for_jpg(tiny_model_dir, tmp_path):
    out = tmp_path / "x.jpg"
    main(["generate", "--prompt", "a red circle", "--steps", "2", "--model", str(tiny_model_dir), "-o", str(out)])
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)


# ---- seeds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "9223372036854775808", "abc"])
def test_a_bad_seed_names_the_option(capsys, no_model, tmp_path, seed):
    line = user_error(capsys, "generate", "--prompt", "a red circle", "--seed", seed, "-o", str(tmp_path / "x.png"))
    assert "'--seed'" in line and seed in line
    assert not (tmp_path / "x.png").exists()


def test_chat_seed_is_checked_too(capsys, no_model):
    assert "'--seed'" in user_error(capsys, "chat", "--seed", "-1")


# ---- models ---------------------------------------------------------------------------------------
def test_a_missing_local_path_is_no_such_folder(capsys, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was asked"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    line = user_error(capsys, "generate", "--prompt", "a red circle", "--model", "runs/missing", "-o", "x.png")
    assert line.startswith("error: no such folder: 'runs/missing'")


@pytest.mark.parametrize("name", ["./missing", "/no/such/model", "~/no-such-model-here", "a/b/c", "runs/missing"])
def test_resolve_checkpoint_path_like_names(no_model, monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match="^no such folder: "):
        resolve_checkpoint(name)


def test_resolve_checkpoint_keeps_hub_ids(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)  # no folder named 'owner' here
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(tmp_path))
    assert resolve_checkpoint("owner/name") == tmp_path and asked == ["owner/name"]


def test_unknown_plain_name_is_still_unknown_model(no_model):
    with pytest.raises(CheckpointError, match="^unknown model 'no-such-model'"):
        resolve_checkpoint("no-such-model")


# ---- help -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["data"], ["eval"]])
def test_bare_commands_print_their_help(capsys, argv):
    main(argv)  # no SystemExit: exit code 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage: latentlm") and "Commands:" in out
    assert err == "" and "error" not in out.lower().split("commands:")[0]


def test_bare_latentlm_exits_0_as_a_program():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "latentlm.cli"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and "Usage: latentlm" in proc.stdout
    assert "chat" in proc.stdout and "error:" not in proc.stdout


# ---- the Python API -------------------------------------------------------------------------------
def test_run_needs_a_string(no_model):
    with pytest.raises(LatentLMError, match="the request must be a string, not int"):
        Session().run(123)
    with pytest.raises(LatentLMError, match="the request is empty"):
        Session().run("   ")


@pytest.mark.parametrize("seed,message", [
    ("3", "seed must be an integer, not str"),
    (1.5, "seed must be an integer, not float"),
    (True, "seed must be an integer, not bool"),
    (-1, r"seed=-1 is out of range: use 0 <= seed <= 2\*\*63 - 1"),
    (2**63, "seed=9223372036854775808 is out of range"),
])
def test_a_bad_seed_names_seed(no_model, seed, message):
    with pytest.raises(LatentLMError, match=message):
        Session(seed=seed)
    with pytest.raises(LatentLMError, match=message):
        Session().run("draw a red circle", seed=seed)
    with pytest.raises(LatentLMError, match=message):
        Session().draw("a red circle", seed=seed)


@pytest.mark.parametrize("kwargs,message", [
    ({"cfg_scale": -0.5}, r"cfg_scale=-0\.5: use a number >= 0"),
    ({"cfg_scale": math.nan}, "cfg_scale=nan: use a number >= 0"),
    ({"cfg_scale": "2"}, "cfg_scale='2': use a number >= 0"),
    ({"steps": 0}, "steps=0: use an integer of at least 1"),
    ({"temperature": 0}, "temperature=0: use a number > 0"),
])
def test_bad_sampling_settings_name_the_argument(no_model, kwargs, message):
    with pytest.raises(LatentLMError, match=message):
        Session(**kwargs)


def test_the_cli_module_has_one_writer():
    assert not hasattr(cli_main, "_atomic_save_png")  # generate and ground --draw both use save_picture


# ---- prompts outside what the model knows ------------------------------------------------------------
@pytest.mark.parametrize("prompt,words", [
    ("a cat sitting on a mat", "'cat', 'sitting', 'on', 'mat'"),
    ("a circle that is red", "'that', 'is'"),
    ("a green square and a yellow circle", "joins two objects with 'and'"),
])
def test_strict_refuses_before_the_model(capsys, no_model, tmp_path, prompt, words):
    line = user_error(capsys, "generate", "--prompt", prompt, "--strict", "-o", str(tmp_path / "x.png"))
    assert words in line and "strict: nothing was run" in line and not (tmp_path / "x.png").exists()
    line = user_error(capsys, "run", f"draw {prompt}", "--strict", "--dry-run")
    assert words in line


def test_generate_warns_on_stderr_and_still_draws(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "cat.png"
    main(["generate", "--prompt", "a cat sitting on a mat", "--steps", "2", "--model", str(tiny_model_dir), "-o",
          str(out)])
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and out.is_file()
    (line,) = captured.err.splitlines()
    assert line.startswith("warning: 'a cat sitting on a mat' has words the model never saw in training ('cat', "
                           "'sitting', 'on', 'mat')")
    main(["generate", "--prompt", "a red circle", "--steps", "2", "--model", str(tiny_model_dir), "-o", str(out)])
    assert capsys.readouterr().err == ""


def test_run_dry_run_prints_the_warning_and_the_plan(capsys, no_model):
    main(["run", "draw a circle that is red and describe it", "--dry-run"])
    captured = capsys.readouterr()
    assert [s["workflow"] for s in json.loads(captured.out)["steps"]] == ["text-to-image", "caption"]
    (line,) = captured.err.splitlines()
    assert line.startswith("warning: 'a circle that is red' has words the model never saw")


def test_ask_and_ground_warn_and_strict(capsys, no_model, scene):
    line = user_error(capsys, "ask", str(scene), "what colour is the cat?", "--strict")
    assert "the question 'what colour is the cat?' has words the model never saw in training ('cat')" in line
    line = user_error(capsys, "ground", str(scene), "the big circle", "--strict")
    assert "('big')" in line


def test_help_says_what_the_model_understands(capsys):
    from latentlm.vocabulary import COLOURS, RELATIONS, SHAPES

    main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in (*COLOURS, *SHAPES, *RELATIONS, "small and large", "--strict"):
        assert word in text, word
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    for word in (*COLOURS, *SHAPES, *RELATIONS, "--strict", "Result.warnings"):
        assert word in readme, word


def _cat_workflow(tmp_path) -> Path:
    path = tmp_path / "cat.yaml"
    path.write_text("name: cat\nsteps:\n  - id: draw\n    uses: text-to-image\n    with: {prompt: \"a cat sitting on a mat\"}\n"
                    "outputs: {picture: \"${{ steps.draw.outputs.image }}\"}\n")
    return path


def test_a_workflow_file_with_unknown_words_refuses_under_strict(capsys, no_model, tmp_path):
    line = user_error(capsys, "run", str(_cat_workflow(tmp_path)), "--strict", "-o", str(tmp_path / "out"))
    assert "step 'draw':" in line and "'cat', 'sitting', 'on', 'mat'" in line and "strict: nothing was run" in line
    assert not (tmp_path / "out").exists()


def test_a_workflow_file_with_unknown_words_warns_and_records_it(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    main(["run", str(_cat_workflow(tmp_path)), "--model", str(tiny_model_dir), "-o", str(out)])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: step 'draw': 'a cat sitting on a mat' has words the model never saw")
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0] == line.removeprefix("warning: ")


@pytest.mark.parametrize("command", ["train", "train-codec", "train-baseline"])
def test_export_to_refuses_several_processes(capsys, tmp_path, command):
    config = tmp_path / "any.yaml"
    config.write_text("{}")
    line = user_error(capsys, command, str(config), "-o", str(tmp_path / "run"), "--export-to",
                      str(tmp_path / "probe"), "--num-processes", "2")
    assert "--export-to" in line and "--num-processes" in line
    assert not (tmp_path / "run").exists()


def test_export_to_without_a_checkpoint_names_the_wait(capsys, tmp_path, tiny_t2i_config):
    line = user_error(capsys, "train", tiny_t2i_config("probe", "steps: 2"), "-o", str(tmp_path / "run"),
                      "--export-to", str(tmp_path / "probe"))
    assert "no checkpoint" in line and "save_every" in line
