"""`Result`: what a Session call returns, read the way diffusers' outputs are read.

`r.image`, `r["image"]` and `r[0]` all work; fields left empty are skipped by key and index access.
`to_dict()` is JSON-serialisable (pictures and audio become sizes, not pixels); `save(dir)` writes
every output and a `manifest.json`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from latentlm.atomic_write import atomic_write
from latentlm.audio_io import wav_bytes


@dataclass(frozen=True)
class Entity:
    """A grounded phrase: its text, its (start, end) span in `Result.text`, its boxes in input pixels."""

    phrase: str
    span: tuple[int, int]
    boxes: list[tuple[float, float, float, float]]  # (x0, y0, x1, y1) in pixels of the input picture

    def to_dict(self) -> dict:
        return {"phrase": self.phrase, "span": list(self.span), "boxes": [[round(v, 2) for v in b] for b in self.boxes]}


@dataclass
class Result:
    text: str | None = None  # clean text, no tags
    kosmos: str | None = None  # the raw Kosmos-2 string, where the task writes one
    images: list[Image.Image] | None = None  # pictures drawn, or the input annotated with its boxes
    audio: Any = None  # float waveform
    sample_rate: int | None = None
    boxes: list[tuple[float, float, float, float]] | None = None  # every entity's boxes, in input pixels
    entities: list[Entity] | None = None
    plan: Any = None  # the steps the request was planned into
    steps: list[dict] = field(default_factory=list)  # one record per executed step
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)
    # In-context demonstrations' pictures by file name (the names `steps[i]["icl"]` gives them); written by
    # `save`, left out of keys, indexing and `to_dict`.
    icl_pictures: dict[str, Image.Image] = field(default_factory=dict, repr=False, metadata={"internal": True})

    @property
    def image(self) -> Image.Image | None:
        """The first picture, if any."""
        return self.images[0] if self.images else None

    def _present(self) -> list[tuple[str, Any]]:
        out = [(f.name, getattr(self, f.name)) for f in fields(self) if not f.metadata.get("internal")]
        out.insert(3, ("image", self.image))
        return [(k, v) for k, v in out if v is not None and not (isinstance(v, list) and not v)]

    def __getitem__(self, key: str | int) -> Any:
        present = self._present()
        if isinstance(key, int):
            return present[key][1]
        value = dict(present).get(key)
        if value is None and key not in {f.name for f in fields(self) if not f.metadata.get("internal")} | {"image"}:
            raise KeyError(f"{key!r} is not a Result field")
        return value

    def keys(self) -> list[str]:
        return [k for k, _ in self._present()]

    def to_dict(self) -> dict:
        """A JSON-serialisable summary: text, boxes and entities as values, media as their sizes."""
        out: dict[str, Any] = {}
        for key, value in self._present():
            if key == "images":
                out["images"] = [{"width": im.width, "height": im.height} for im in value]
            elif key == "image":
                continue
            elif key == "audio":
                out["audio"] = {"samples": len(value)}
            elif key == "entities":
                out["entities"] = [e.to_dict() for e in value]
            elif key == "boxes":
                out["boxes"] = [[round(v, 2) for v in b] for b in value]
            elif key == "plan":
                out["plan"] = value.to_dict() if hasattr(value, "to_dict") else value
            else:
                out[key] = value
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write pictures (PNG), text, audio (16-bit WAV), in-context demonstrations' pictures (`icl/...`,
        named in the steps' traces) and `manifest.json` into `directory`; returns the manifest's path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        manifest = self.to_dict()
        names = []
        for i, im in enumerate(self.images or []):
            names.append(f"image_{i}.png")
            atomic_write(d / names[-1], lambda f, im=im: im.save(f, format="PNG"))
        if names:
            manifest["images"] = names
        for name, im in self.icl_pictures.items():  # named in manifest["steps"][i]["icl"]
            atomic_write(d / name, lambda f, im=im: im.save(f, format="PNG"))
        if self.text is not None:
            atomic_write(d / "text.txt", lambda f: f.write((self.text + "\n").encode()))
        if self.audio is not None:
            manifest["audio"] = "audio.wav"
            data = wav_bytes(self.audio, self.sample_rate)
            atomic_write(d / "audio.wav", lambda f: f.write(data))
        atomic_write(d / "manifest.json", lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
        return d / "manifest.json"
