"""`latentlm chat`: a whole conversation through piped input, and the loop's edge cases on a stub session."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from latentlm.cli.chat import Chat, find_attachments
from latentlm.cli.main import cli
from latentlm.errors import LatentLMError
from latentlm.workflows.ask import TextOutputs
from latentlm.workflows.ground import GroundedOutputs
from latentlm.workflows.session import Session
from latentlm.workflows.text_to_image import ImageOutputs


def after(lines: list[str], prompt_line: str) -> list[str]:
    """The output lines between `prompt_line` and the next prompt."""
    i = lines.index(prompt_line)
    out = []
    for line in lines[i + 1:]:
        if line.startswith((">>> ", "... ")) or line == ">>>":
            break
        out.append(line)
    return out


def test_a_whole_conversation(tiny_model_dir, tmp_path, monkeypatch):
    from latentlm.workflows.registry import REGISTRY

    monkeypatch.delitem(REGISTRY, "text-to-speech", raising=False)  # as a release without speech: "say" is refused
    out_dir, save_dir, scene = tmp_path / "chat", tmp_path / "saved" / "last", tmp_path / "scene.png"
    Image.new("RGB", (96, 80), "white").save(scene)
    script = "\n".join([
        "draw a red circle above a blue square",
        "where is the circle?",
        "what colour is the square?",
        "describe it",
        f"what colour is the circle? {scene}",
        "/show",
        "/set seed 5",
        '"""',
        "draw a blue",
        "square",
        '"""',
        "/show",
        f"/save {save_dir}",
        "say hello",
        "/set seed -1",
        "/bye",
        "draw a green triangle",
    ]) + "\n"
    result = CliRunner().invoke(cli, ["chat", "--model", str(tiny_model_dir), "-o", str(out_dir), "--steps", "2"],
                                input=script)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("latentlm chat: model ") and "seed 0" in lines[0]

    # a drawing: its PNG path is printed, and it becomes the conversation's picture
    drawn = after(lines, ">>> draw a red circle above a blue square")
    assert len(drawn) == 1 and drawn[0].endswith(".png") and Path(drawn[0]).parent == out_dir
    with Image.open(drawn[0]) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    # follow-ups are asked about it: grounding saves the annotated picture and prints text, no errors
    grounded = after(lines, ">>> where is the circle?")
    assert grounded[0].endswith(".png") and Path(grounded[0]).is_file() and len(grounded) >= 2
    for asked in (">>> what colour is the square?", ">>> describe it"):
        answer = after(lines, asked)
        assert len(answer) == 1 and not answer[0].startswith("error:"), answer
    # an attached picture (its path removed from the request) is asked about, and becomes the picture
    assert not after(lines, f">>> what colour is the circle? {scene}")[0].startswith("error:")
    first_show = after(lines, ">>> /show")
    assert f"picture: {scene}" in first_show
    assert "last: 'what colour is the circle?' (ask)" in first_show
    assert "seed: 0" in first_show and f"model: {tiny_model_dir}" in first_show

    assert after(lines, ">>> /set seed 5") == ["seed set to 5"]
    # multi-line input: continuation prompts, then one request (a new drawing, with seed 5)
    i = lines.index('>>> """')
    assert lines[i + 1:i + 4] == ["... draw a blue", "... square", '... """']
    second = lines[i + 4]
    assert second.endswith(".png") and Path(second).is_file() and second != drawn[0]
    show = lines[i + 5:]
    assert show[0] == ">>> /show"
    show = after(show, ">>> /show")
    assert "seed: 5" in show and f"picture: {second}" in show and f"outputs: {out_dir}/" in show
    assert "last: 'draw a blue square' (text-to-image)" in show and f"  {second}" in show

    assert after(lines, f">>> /save {save_dir}") == [f"saved {save_dir}/: image_0.png, manifest.json"]
    manifest = json.loads((save_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["images"] == ["image_0.png"]
    assert manifest["plan"]["steps"][0] == {"workflow": "text-to-image", "args": {"prompt": "a blue square"}}
    with Image.open(save_dir / "image_0.png") as a, Image.open(second) as b:
        assert a.tobytes() == b.tobytes()

    # errors: one line, and the conversation goes on
    error = after(lines, ">>> say hello")
    assert len(error) == 1 and error[0].startswith("error: speech requests")
    assert after(lines, ">>> /set seed -1") == ["error: seed=-1 is out of range: use 0 <= seed <= 2**63 - 1"]
    # /bye ends it: nothing after it is read
    assert lines[-1] == ">>> /bye" and "draw a green triangle" not in result.output
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert len(pngs) == 3 and pngs[0].startswith("001-") and not list(out_dir.glob(".*"))


# ---- the loop on a stub session (no model) ----------------------------------------------------------
class StubSession(Session):
    """The real Session (planner, memory, step records) with stub workflows instead of a model; a prompt
    with 'interrupt' raises KeyboardInterrupt mid-step. `calls` holds each workflow and its arguments."""

    def __init__(self):
        super().__init__("no-model-loaded")
        self.calls, self.outputs = [], []

    def _run_workflow(self, workflow, args):
        if "interrupt" in str(args.get("prompt", "")):
            raise KeyboardInterrupt
        self.calls.append((workflow, dict(args)))
        if workflow == "text-to-image":
            out = ImageOutputs(image=Image.new("RGB", (64, 64), "red"))
        elif workflow in ("caption", "ground"):
            out = GroundedOutputs(text=f"{workflow} answer")
        else:
            out = TextOutputs(text=f"{workflow} answer")
        self.outputs.append(out)
        return out


def converse(tmp_path, *inputs) -> tuple[Chat, list[str]]:
    out = io.StringIO()
    chat = Chat(StubSession(), tmp_path / "chat", model_name="stub", out=out)
    (tmp_path / "chat").mkdir(exist_ok=True)
    queue = list(inputs)

    def read(prompt):
        out.write(prompt)
        if not queue:
            return None
        item = queue.pop(0)
        if item is KeyboardInterrupt:
            raise KeyboardInterrupt
        out.write(item + "\n")
        return item

    chat.loop(read)
    return chat, out.getvalue().splitlines()


def test_ctrl_c_stops_the_step_not_the_session(tmp_path):
    chat, lines = converse(tmp_path, "draw an interrupt", "draw a red circle", "describe it")
    assert "interrupted: the step was stopped; the conversation goes on" in lines
    assert [(w, a.get("prompt")) for w, a in chat.session.calls] == [("text-to-image", "a red circle"),
                                                                     ("caption", None)]
    assert chat.session.calls[1][1]["image"] is chat.picture  # the follow-up is about the drawing
    assert chat.session.memory.prompt == "a red circle"
    assert lines[-1] == ">>> "  # EOF ends it after the last prompt


def test_ctrl_c_at_the_prompt_and_eof(tmp_path):
    chat, lines = converse(tmp_path, KeyboardInterrupt, "draw a red circle")
    assert "(Ctrl-C: type /bye or press Ctrl-D to leave)" in lines
    assert len(chat.session.calls) == 1 and lines[-1] == ">>> "


def test_drawing_again_while_a_picture_is_held(tmp_path):
    chat, lines = converse(tmp_path, "draw a red circle", "a blue square", "where is the square?", "now make it green",
                           "/clear", "describe it")
    calls = chat.session.calls
    assert [(w, a.get("prompt"), a.get("phrase")) for w, a in calls] == [
        ("text-to-image", "a red circle", None), ("text-to-image", "a blue square", None),
        ("ground", None, "the square"), ("text-to-image", "a green square", None)]
    assert calls[2][1]["image"] is chat.session.outputs[1].image  # about the second drawing, read from memory
    assert lines[-2].startswith("error: 'describe it' is about a picture, and there is no earlier picture")
    assert chat.picture is None and chat.picture_path is None
    assert (tmp_path / "chat" / "002-a-blue-square.png").is_file()
    assert (tmp_path / "chat" / "004-now-make-it-green.png").is_file()


def test_commands_and_their_errors(tmp_path):
    chat, lines = converse(tmp_path, "/save x", "/set seed abc", "/set colour red", "/nope", "/help", "/show",
                           '"""one line"""', '"""', "unclosed")
    assert "error: nothing to save yet: ask for something first" in lines
    assert "error: /set seed abc: the seed must be an integer, e.g. /set seed 42" in lines
    assert "error: use /set seed N, e.g. /set seed 42" in lines
    assert "error: unknown command /nope; /help lists the commands" in lines
    assert any("/save DIR" in line for line in lines) and "last: none" in lines
    assert chat.session.calls == [("text-to-image", {"prompt": "one line", "seed": 0})]  # a fenced line is one message
    assert any(line.startswith("warning: 'one line' has words the model never saw") for line in lines)
    assert lines[-1] == 'error: the input ended inside a """ block; that message was not sent'


def test_numbering_continues_in_a_used_folder(tmp_path):
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "007-old.png").write_bytes(b"")
    _, lines = converse(tmp_path, "draw a red circle")
    assert str(tmp_path / "chat" / "008-draw-a-red-circle.png") in lines


def test_attachments(tmp_path):
    pic = tmp_path / "my scene.png"
    Image.new("RGB", (8, 8)).save(pic)
    other = tmp_path / "b.webp"
    Image.new("RGB", (8, 8)).save(other)
    assert find_attachments(f'describe "{pic}" please') == ([pic], "describe please")
    assert find_attachments(f"what is in {other}?") == ([other], "what is in ?")
    assert find_attachments("draw a red circle") == ([], "draw a red circle")
    with pytest.raises(LatentLMError, match="no such picture file: missing.jpg"):
        find_attachments("describe missing.jpg")
    chat, lines = converse(tmp_path, str(other), f'"{pic}" {other} compare')
    assert f"attached {other} (8x8); ask about it, e.g. 'describe it'" in lines
    assert chat.picture_path == str(other) and lines[-2] == "error: attach one picture per message, not 2"


def test_chat_output_folder_is_checked_before_the_model_loads(monkeypatch):
    from latentlm.cli.main import main
    from latentlm.model import LatentLM

    monkeypatch.setattr(LatentLM, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        main(["chat", "-o", "/sys/latentlm-chat"])
    assert e.value.code == 2


def test_speech_is_saved_as_a_wav_and_its_path_printed(tmp_path):
    """'say ...' (a model that speaks): the wave goes into the output folder as NNN-<request>.wav, numbered
    with the pictures; /save writes it as audio.wav."""
    import numpy as np
    import soundfile

    from latentlm.workflows.text_to_speech import AudioOutputs

    class Speaking(StubSession):
        def _run_workflow(self, workflow, args):
            if workflow != "text-to-speech":
                return super()._run_workflow(workflow, args)
            self.calls.append((workflow, dict(args)))
            return AudioOutputs(audio=np.full(1600, 0.25, dtype=np.float32), sample_rate=16_000)

    out = io.StringIO()
    chat = Chat(Speaking(), tmp_path / "chat", model_name="stub", out=out)
    queue = ["draw a red circle", "say a red circle", f"/save {tmp_path / 'saved'}"]
    chat.loop(lambda prompt: queue.pop(0) if queue else None)
    lines = out.getvalue().splitlines()
    wav = tmp_path / "chat" / "002-say-a-red-circle.wav"
    assert str(wav) in lines and chat.session.calls[-1] == ("text-to-speech", {"text": "a red circle", "seed": 0})
    samples, rate = soundfile.read(str(wav))
    assert rate == 16_000 and len(samples) == 1600 and abs(samples.mean() - 0.25) < 1e-3
    assert f"saved {tmp_path / 'saved'}/: audio.wav, manifest.json" in lines
    assert (tmp_path / "saved" / "audio.wav").is_file()
