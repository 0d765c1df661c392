"""`latentlm chat`: an interactive session in the terminal, in the manner of `ollama run`.

    $ latentlm chat
    >>> draw a red circle above a blue square
    latentlm-chat/001-a-red-circle-above-a-blue-square.png
    >>> where is the circle?
    latentlm-chat/002-where-is-the-circle.png
    the circle
      the circle: (20, 4, 44, 28)
    >>> say a red circle                      (a model trained with speech)
    latentlm-chat/003-say-a-red-circle.wav
    >>> /bye

The conversation is the Session's memory (`Session.memory`, planned by `workflows/planner.py`): the
last picture drawn or attached (a message holding a picture's path) is the one questions, captions and
"where is ..." are about, and "now make it green" redraws the last drawing changed. Pictures are saved
as PNG and speech as 16-bit WAV into the output folder and their paths printed; text is printed,
warnings (words the model never saw) as `warning: ...` lines. A user error prints one `error: ...` line
and the conversation goes on; Ctrl-C stops the current step, Ctrl-D (or the end of piped input) ends it.

`Chat` holds the logic and runs without a terminal: `Chat(session, out_dir).loop(read)`, where `read`
returns the next input line or None at the end. With piped input each line is echoed after its prompt,
so the transcript reads like the terminal session.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from latentlm.cli.verify_option import NO_VERIFY
from latentlm.errors import LatentLMError
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_OUT = Path("latentlm-chat")
EXIT_COMMANDS = ("/bye", "/exit", "/quit")
COMMANDS = ("/help", "/?", "/set", "/show", "/save", "/clear", *EXIT_COMMANDS)

HELP = f"""\
Ask for a picture ('draw a red circle above a blue square'), then ask about it: 'describe it',
'where is the circle?', 'what colour is the square?', or change it: 'now make it green'. Two steps
at once: 'draw a blue square and describe it'. Speech (a model trained with it): 'say a red circle'
is saved as a WAV file. A picture's path in a message attaches it
({' '.join(IMAGE_SUFFIXES)}); the last picture drawn or attached is the one questions are about.
  /help, /?      this help
  /set seed N    the seed of the next steps (0 <= N <= 2**63 - 1)
  /show          the model, the settings, the conversation's picture and the last outputs
  /save DIR      save the last result (pictures, text, speech, manifest.json) into DIR
  /clear         forget the conversation: its picture and the last result
  /bye           leave (so does Ctrl-D)
  \"\"\"            starts and ends a message of several lines
Ctrl-C stops the current step; the conversation goes on."""

_TOKEN = re.compile(r'"[^"]+"|\'[^\']+\'|\S+')
_NUMBERED = re.compile(r"^(\d+)-")


def one_line(error: BaseException) -> str:
    from latentlm.cli.outputs import one_line as line

    return line(str(error)) or type(error).__name__


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].rstrip("-")


def find_attachments(text: str) -> tuple[list[Path], str]:
    """The picture files named in `text` (existing files with a picture suffix, quoted or not, trailing
    punctuation allowed) and the text without them. A picture name that is not a file is an error."""
    found: list[Path] = []
    pieces: list[str] = []
    last = 0
    for m in _TOKEN.finditer(text):
        token = m.group()
        quoted = token[0] in "\"'" and len(token) >= 2 and token[-1] == token[0]
        bare = token[1:-1] if quoted else token
        name = bare if quoted else bare.rstrip(".,;:!?")
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        path = Path(name).expanduser()
        if not path.is_file():
            raise LatentLMError(f"no such picture file: {name}; give the path of an existing picture")
        found.append(path)
        pieces.append(text[last:m.start()] + ("" if quoted else bare[len(name):]))
        last = m.end()
    pieces.append(text[last:])
    return found, " ".join("".join(pieces).split())


class Chat:
    """One conversation: a Session (which remembers the picture), the last result, an output folder."""

    def __init__(self, session, out_dir: str | os.PathLike = DEFAULT_OUT, model_name: str = "",
                 out: TextIO | None = None):
        self.session = session
        self.out_dir = Path(out_dir)
        self.model_name = model_name or str(getattr(session, "_model", ""))
        self.out = out if out is not None else sys.stdout
        self.picture_path: str | None = None  # where the Session's picture is on disk, for /show
        self.last = None  # the last Result
        self.last_request: str | None = None
        self.last_lines: list[str] = []
        numbers = [int(m.group(1)) for p in self.out_dir.glob("*") if (m := _NUMBERED.match(p.name))]
        self.count = max(numbers, default=0)  # outputs are numbered on from earlier chats in the folder

    @property
    def picture(self):
        """The picture follow-ups are about: the Session's memory."""
        return self.session.memory.picture

    # ---- output ---------------------------------------------------------------------------------
    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def banner(self) -> None:
        self.say(f"latentlm chat: model {self.model_name}, seed {self.session.seed}, outputs in {self.out_dir}/ "
                 "(/help for commands, /bye or Ctrl-D to leave)")

    # ---- the loop ---------------------------------------------------------------------------------
    def loop(self, read: Callable[[str], str | None]) -> None:
        """Read messages with `read(prompt)` (None at the end of input) and answer each until /bye or EOF."""
        while True:
            try:
                message = self.read_message(read)
            except KeyboardInterrupt:
                self.say()
                self.say("(Ctrl-C: type /bye or press Ctrl-D to leave)")
                continue
            except EOFError:  # inside a block, already reported
                return
            if message is None:
                self.say()  # end the last prompt's line
                return
            try:
                if not self.handle(*message):
                    return
            except KeyboardInterrupt:
                self.say()
                self.say("interrupted: the step was stopped; the conversation goes on")

    def read_message(self, read: Callable[[str], str | None]) -> tuple[str, bool] | None:
        """(message, is_block): one line, or the lines between two \"\"\" fences; None at the end of input."""
        line = read(PROMPT)
        if line is None:
            return None
        if not line.lstrip().startswith(FENCE):
            return line, False
        rest = line.lstrip()[len(FENCE):]
        if rest.rstrip().endswith(FENCE):
            return rest.rstrip()[:-len(FENCE)], True
        lines = [rest] if rest.strip() else []
        while True:
            more = read(CONTINUATION)
            if more is None:
                self.say()
                self.say(f'error: the input ended inside a {FENCE} block; that message was not sent')
                raise EOFError
            if more.rstrip().endswith(FENCE):
                lines.append(more.rstrip()[:-len(FENCE)])
                return "\n".join(lines), True
            lines.append(more)

    def handle(self, message: str, is_block: bool = False) -> bool:
        """Answer one message; False when the conversation is over. User errors print `error: ...`."""
        text = message.strip()
        if not text:
            return True
        try:
            if not is_block and text.startswith("/"):
                word = text.split()[0]
                if word.lower() in COMMANDS:
                    return self.command(text)
                if not Path(word).expanduser().is_file():
                    raise LatentLMError(f"unknown command {word}; /help lists the commands")
            self.request(text)
        except (LatentLMError, OSError, ValueError) as e:
            self.say(f"error: {one_line(e)}")
        return True

    # ---- slash commands ------------------------------------------------------------------------
    def command(self, text: str) -> bool:
        word, _, rest = text.partition(" ")
        word, rest = word.lower(), rest.strip()
        if word in EXIT_COMMANDS:
            return False
        if word in ("/help", "/?"):
            self.say(HELP)
        elif word == "/set":
            self.set(rest)
        elif word == "/show":
            self.show()
        elif word == "/save":
            self.save(rest)
        elif word == "/clear":
            self.session.forget()
            self.picture_path = self.last = self.last_request = None
            self.last_lines = []
            self.say("cleared: no picture, no last result")
        return True

    def set(self, rest: str) -> None:
        from latentlm.workflows.session import check_seed

        words = rest.split()
        if words[:1] == ["parameter"]:  # ollama's spelling: /set parameter seed 42
            words = words[1:]
        if len(words) != 2 or words[0] != "seed":
            raise LatentLMError("use /set seed N, e.g. /set seed 42")
        try:
            value = int(words[1])
        except ValueError:
            raise LatentLMError(f"/set seed {words[1]}: the seed must be an integer, e.g. /set seed 42") from None
        self.session.seed = check_seed(value, "seed")
        self.say(f"seed set to {value}")

    def show(self) -> None:
        s = self.session
        self.say(f"model: {self.model_name}")
        self.say(f"seed: {s.seed}")
        self.say(f"steps: {s.steps}, cfg: {s.cfg_scale:g}, temperature: {s.temperature:g}")
        self.say(f"outputs: {self.out_dir}/")
        self.say(f"picture: {self.picture_path or 'none'}")
        if self.last is None:
            self.say("last: none")
            return
        self.say(f"last: {self.last_request!r} ({self._workflow(self.last)})")
        for line in self.last_lines:
            self.say(f"  {line}")

    def save(self, rest: str) -> None:
        from latentlm.cli.main import check_writable_dir

        if not rest:
            raise LatentLMError("use /save DIR, e.g. /save results/circle")
        if self.last is None:
            raise LatentLMError("nothing to save yet: ask for something first")
        directory = check_writable_dir(rest.strip("\"'"), "/save")
        self.last.save(directory)
        names = [f"image_{i}.png" for i in range(len(self.last.images or []))]
        names += ["text.txt"] * (self.last.text is not None) + ["audio.wav"] * (self.last.audio is not None)
        names += ["manifest.json"]
        self.say(f"saved {directory}/: {', '.join(names)}")

    # ---- requests -------------------------------------------------------------------------------
    def request(self, text: str) -> None:
        attached, text = find_attachments(text)
        if len(attached) > 1:
            raise LatentLMError(f"attach one picture per message, not {len(attached)}")
        if not attached:
            self.run(text)
            return
        picture = self.session.attach(attached[0])  # an unreadable file fails here, naming it
        self.picture_path = str(attached[0])
        if not text:
            self.say(f"attached {attached[0]} ({picture.width}x{picture.height}); ask about it, e.g. 'describe it'")
            return
        self.run(text, picture)

    def run(self, text: str, picture=None) -> None:
        """Run one request through the Session (which knows the conversation's picture); print and save."""
        from latentlm.audio_io import save_audio
        from latentlm.cli.main import save_picture

        result = self.session.run(text, image=picture)
        workflow = self._workflow(result)
        self.count += 1
        for warning in result.warnings:
            self.say(f"warning: {one_line(LatentLMError(warning))}")
        lines = []
        stem = f"{self.count:03d}-{_slug(text) or workflow}"
        for i, image in enumerate(result.images or []):
            name = f"{stem}{f'-{i}' if i else ''}.png"
            path = save_picture(image, self.out_dir / name)
            lines.append(str(path))
            if image is self.session.memory.picture:
                self.picture_path = str(path)
        if result.audio is not None:
            lines.append(str(save_audio(result.audio, result.sample_rate, self.out_dir / f"{stem}.wav")))
        if result.text is not None:
            lines.append(result.text)
        for e in result.entities or []:
            boxes = "; ".join("(" + ", ".join(f"{v:.0f}" for v in b) + ")" for b in e.boxes)
            lines.append(f"  {e.phrase}: {boxes}")
        if not result.entities and result.boxes:
            lines.append("  boxes: " + "; ".join("(" + ", ".join(f"{v:.0f}" for v in b) + ")" for b in result.boxes))
        for line in lines:
            self.say(line)
        self.last, self.last_request, self.last_lines = result, text, [ln.strip() for ln in lines]

    @staticmethod
    def _workflow(result) -> str:
        return result.steps[-1]["workflow"] if result.steps else "?"


def line_reader(stdin: TextIO, out: TextIO, interactive: bool) -> Callable[[str], str | None]:
    """`read(prompt)`: readline editing on a terminal; with piped input, the prompt and the echoed line."""

    def read(prompt: str) -> str | None:
        if interactive:
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:
                pass
            try:
                return input(prompt)
            except EOFError:
                return None
        out.write(prompt)
        out.flush()
        line = stdin.readline()
        if not line:
            return None
        line = line.rstrip("\r\n")
        out.write(line + "\n")
        return line

    return read


@click.command("chat")
@click.option("--model", default="shapes-tiny", show_default=True, help="Shipped name, checkpoint folder or hub id.")
@click.option("--speech-model", default=None,
              help="A second model for speech ('say ...'); --model draws and reads (loaded when first needed).")
@NO_VERIFY
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="The seed of each step (change it in the chat with /set seed N).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Folder for the pictures and speech of the conversation.")
@click.option("--steps", type=click.IntRange(min=1, max=1000), default=DEFAULT_STEPS, show_default=True,
              help="Diffusion sampling steps per latent.")
@click.option("--cfg", "cfg", type=click.FloatRange(min=0), default=DEFAULT_CFG, show_default=True,
              help="Classifier-free guidance scale (1 = off).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TEMPERATURE,
              show_default=True, help="Scale of the starting noise.")
def chat_cmd(model: str, speech_model: str | None, seed: int, out: Path, steps: int, cfg: float,
             temperature: float) -> None:
    """Talk to a model in the terminal: draw, then ask about the picture (/help inside).

    \b
    Example:
      latentlm chat
      >>> draw a red circle above a blue square
      >>> where is the circle?
      >>> /save results/circle
      >>> /bye
      printf 'draw a blue square\\ndescribe it\\n' | latentlm chat -o chat-out
    """
    from latentlm.cli.main import check_writable_dir

    out = check_writable_dir(out, "--out")  # before the model loads
    from latentlm.model import LatentLM
    from latentlm.workflows.session import Session

    session = Session(LatentLM.from_pretrained(model), seed=seed, steps=steps, cfg_scale=cfg, temperature=temperature,
                      speech_model=speech_model)
    stdout, stdin = sys.stdout, sys.stdin  # looked up now: click's test runner swaps them
    interactive = stdin.isatty() and stdout.isatty()
    chat = Chat(session, out, model_name=model, out=stdout)
    chat.banner()
    chat.loop(line_reader(stdin, stdout, interactive))
