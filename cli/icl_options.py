"""`--icl direct|auto|fewshot` and its companions, for the commands that read (or draw) pictures.

    latentlm ask scene.png "what colour is the circle?" --icl auto                  # AutoICL, generating
    latentlm ask scene.png "what colour is the circle?" --icl auto --icl-pool pics/ # AutoICL, retrieving
    latentlm caption scene.png --icl fewshot --icl-demos demos.json                 # given demonstrations
    latentlm caption scene.png --icl fewshot --icl-demos demos.json --icl-select similar  # the 3 nearest

`--icl-demos` is a JSON list of `{"image": PATH, "prompt": TEXT, "answer": TEXT}` (reading) or
`{"image": PATH, "caption": TEXT}` (drawing), paths relative to the file. `--icl-pool` is a folder of
pictures (PNG, JPEG) or one picture file. Everything is checked before the model loads.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import click

from latentlm.errors import LatentLMError

ICL_MODES = {"direct": "direct", "auto": "autoicl", "fewshot": "fewshot"}  # option value -> Session(prompting=)
POOL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ICLChoice:
    mode: str | None  # a key of ICL_MODES; None: not given (direct, or a workflow file's `prompting:`)
    demos: Path | None = None
    pool: Path | None = None
    select: str = "fixed"

    def session_kwargs(self) -> dict:
        """Keyword arguments of `Session` for this choice (demonstrations loaded and checked)."""
        if self.mode == "fewshot" and self.demos is None:
            raise LatentLMError("--icl fewshot needs --icl-demos FILE.json: a list of {\"image\", \"prompt\", "
                                "\"answer\"} (or {\"image\", \"caption\"} for drawing)")
        if self.demos is not None and self.mode != "fewshot":
            raise LatentLMError("--icl-demos is for --icl fewshot")
        if self.pool is not None and self.mode != "auto":
            raise LatentLMError("--icl-pool is for --icl auto (its retrieving mode)")
        if self.select != "fixed" and self.mode not in ("fewshot", "auto"):
            raise LatentLMError("--icl-select is for --icl fewshot or --icl auto")
        out: dict = {"prompting": ICL_MODES[self.mode or "direct"], "icl_select": self.select}
        if self.demos is not None:
            out["demonstrations"] = read_demonstrations(self.demos)
        return out

    def pool_pictures(self) -> list[Path]:
        """The pool's picture files, sorted by name ([] without --icl-pool)."""
        if self.pool is None:
            return []
        if self.pool.is_file():
            return [self.pool]
        if not self.pool.is_dir():
            raise LatentLMError(f"--icl-pool {self.pool}: no such folder or picture")
        files = sorted(p for p in self.pool.iterdir() if p.suffix.lower() in POOL_SUFFIXES)
        if not files:
            raise LatentLMError(f"--icl-pool {self.pool}: the folder holds no picture ({', '.join(POOL_SUFFIXES)})")
        return files


def read_demonstrations(path: Path) -> list[tuple]:
    """The demonstrations of an --icl-demos file as `(picture path, prompt, answer)` / `(picture path, caption)`."""
    try:
        items = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LatentLMError(f"--icl-demos {path}: cannot read it as JSON ({type(e).__name__})") from None
    if not isinstance(items, list) or not items:
        raise LatentLMError(f"--icl-demos {path}: expected a non-empty JSON list of demonstrations")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise LatentLMError(f"--icl-demos {path}: item {i} needs \"image\" (a picture path) and \"prompt\" and "
                                "\"answer\", or \"caption\"")
        picture = path.parent / item["image"]
        text = [item[k] for k in ("prompt", "answer") if k in item] or [item.get("caption")]
        if not all(isinstance(t, str) for t in text):
            raise LatentLMError(f"--icl-demos {path}: item {i} needs text \"prompt\" and \"answer\", or \"caption\"")
        out.append((picture, *text))
    return out


def icl_options(command):
    """Add --icl, --icl-demos, --icl-pool and --icl-select; the command gets them as one `icl: ICLChoice`."""
    @functools.wraps(command)
    def wrapper(*args, icl: str, icl_demos: Path | None, icl_pool: Path | None, icl_select: str, **kwargs):
        return command(*args, icl=ICLChoice(icl, icl_demos, icl_pool, icl_select), **kwargs)

    options = [
        click.option("--icl", type=click.Choice(list(ICL_MODES)), default=None,
                     help="Prompting: direct (the query alone, the default; a workflow file: its prompting:), "
                          "auto (AutoICL: the model makes its own demonstrations first) or fewshot (--icl-demos)."),
        click.option("--icl-demos", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="--icl fewshot: a JSON list of {image, prompt, answer} (or {image, caption})."),
        click.option("--icl-pool", type=click.Path(path_type=Path), default=None,
                     help="--icl auto: a folder of unlabelled pictures to take demonstrations from (retrieving mode)."),
        click.option("--icl-select", type=click.Choice(["fixed", "similar"]), default="fixed", show_default=True,
                     help="--icl fewshot / auto with --icl-pool: the same demonstrations for every query of a task "
                          "(fixed) or the 3 whose pictures are nearest the query's (similar)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def icl_session(model: str, icl: ICLChoice | None = None, strict: bool = False, speech_model: str | None = None):
    """A Session with the chosen prompting (and pool), speaking with `speech_model` where given; user errors
    before the model loads."""
    from latentlm.workflows.session import Session

    icl = icl or ICLChoice(None)
    session = Session(model, strict=strict, speech_model=speech_model, **icl.session_kwargs())
    pool = icl.pool_pictures()
    if pool:
        session.icl_pool(pool)
    return session
