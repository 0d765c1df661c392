"""Where the CLI writes: output folders checked before any model work, pictures in the suffix's format;
and the one place warnings go (stderr, one `warning: ...` line each)."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import click

from latentlm.errors import LatentLMError

PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
_SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"))


def check_writable_dir(directory: str | os.PathLike, option: str = "--out", shown: object = None) -> Path:
    """Create `directory` if needed and prove it writable with a temporary file, before any model work.

    A system folder (/proc, /sys), a file in the way, a read-only file system or a missing permission
    is a one-line `LatentLMError` naming `option` and `shown` (default: the folder)."""
    d = Path(directory).expanduser()
    where = f"cannot write {option} {directory if shown is None else shown}"
    resolved = d.resolve()
    for system in _SYSTEM_FOLDERS:
        if resolved == system or system in resolved.parents:
            raise LatentLMError(f"{where}: {system} is a system folder, not a place for outputs; choose another folder")
    existing = next((p for p in (d, *d.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise LatentLMError(f"{where}: {existing} is a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".latentlm-write-test-"):
            pass
    except OSError as e:
        raise LatentLMError(f"{where}: {d} is not writable ({e.strerror or e}); choose another folder") from None
    return d


def check_picture_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """A picture output path whose suffix names a format we write, in a writable folder."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in PICTURE_FORMATS:
        raise LatentLMError(f"{option} {path}: unknown picture format {path.suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(PICTURE_FORMATS)}")
    if path.is_dir():
        raise LatentLMError(f"{option} {path} is a folder; give a file name, e.g. {path / ('out' + path.suffix)}")
    check_writable_dir(path.parent, option, shown=path)
    return path


def save_picture(image, out: str | os.PathLike) -> Path:
    """Write `image` in the format its suffix names (JPEG as RGB, quality 95), atomically."""
    out = Path(out).expanduser()
    fmt = PICTURE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise LatentLMError(f"{out}: unknown picture format {out.suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(PICTURE_FORMATS)}")
    options = {"quality": 95} if fmt == "JPEG" else {}
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        image.save(tmp, format=fmt, **options)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def one_line(text: str) -> str:
    """`text` as one line: runs of spaces, tabs and line breaks as one space, other unprintable characters
    escaped (`\\x1e`), so that a message never spans lines, whatever the user typed into it."""
    text = " ".join(re.split(r"[ \t\n\r]+", str(text).strip()))
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def echo_warnings(result) -> None:
    """Each of `result.warnings` (prompts outside what the model knows) as one `warning: ...` line on stderr."""
    for warning in getattr(result, "warnings", None) or []:
        click.echo(f"warning: {one_line(warning)}", err=True)
