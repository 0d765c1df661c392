"""Run a checked workflow file with one `Session` (one model load) and write its outputs.

    run_workflow_file("draw.yaml", model="shapes-tiny", out="outputs/draw", sets=["prompt=a blue square"])

Everything that can fail without the model fails first, in this order: the file (every problem,
with line and column), the input values (`--set` typed by each input's declared type; pictures
loaded, recordings read), each step's arguments that are known before running (literals and
inputs), the output folder (created and test-written), the checkpoint (resolved and its weights
hashed). Only then does the Session load the model, on the first step.

The output folder (default `outputs/<name>-<YYYYmmdd-HHMMSS>`, relative to the current folder, with
`-2`, `-3`, ... if taken) receives, each written atomically (temporary file + rename):

- `<output>.png` for a picture output, `<output>.wav` for speech (16-bit PCM), `<output>.txt` for a text
  output (the text exactly);
- `steps/<id>.<field>.png` (`.wav`) for a picture (speech) one step passed to another that is not itself
  an output;
- `manifest.json`, last:

      {"workflow": name, "description": ..., "file": path, "file_sha256": ...,
       "latentlm_version": ..., "created": ISO time,
       "model": {"name": ..., "checkpoint": dir, "weights_sha256": sha256 of model.safetensors},
       "speech_model": {...},                          # only with a second model for speech, as "model"
       "sampling": {"steps": ..., "cfg_scale": ..., "temperature": ...},   # the Session's (pictures)
       "inputs": {NAME: value},                        # pictures and recordings as their path
       "steps": [{"id", "workflow", "inputs": {...},    # pictures and speech as file names
                  "seed", "seconds", "sampling"?}],      # a step's own steps/cfg_scale/temperature (speech)
       "outputs": {NAME: {"type": "image", "file", "sha256", "width", "height"}
                       | {"type": "audio", "file", "sha256", "sample_rate", "seconds"}
                       | {"type": "text", "file", "sha256", "value"}
                       | {"type": "value", "value"}},   # numbers, boxes, entities, ...: JSON
       "files": {relative path: sha256}}                 # every file written but the manifest
"""
from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from latentlm.audio_io import Sound, load_audio, wav_bytes
from latentlm.errors import LatentLMError
from latentlm.images import load_image
from latentlm.workflows.registry import get
from latentlm.atomic_write import atomic_write
from latentlm.workflows.result import Entity
from latentlm.workflows.workflow_file import (FILE_KINDS, Ref, Template, WorkflowFile, load_workflow_file,
                                             target_kind)

OUTPUTS_ROOT = Path("outputs")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class WorkflowRunError(LatentLMError):
    """A workflow file that is valid but cannot run as asked (inputs, output folder, a step)."""


@dataclass
class RunOutcome:
    out_dir: Path
    manifest: dict
    values: dict[str, Any]  # output name -> the object (a PIL picture, text, boxes, ...)

    @property
    def warnings(self) -> list[str]:
        """Arguments the model was not trained on (words, forms), as for `Result.warnings`."""
        return self.manifest.get("warnings", [])

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "manifest.json"


# ---- inputs -----------------------------------------------------------------------------------------
def parse_sets(sets: Iterable[str]) -> dict[str, str]:
    """`["key=value", ...]` -> `{key: value}` (the value stays text until typed)."""
    out: dict[str, str] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise WorkflowRunError(f"--set {item!r}: use --set KEY=VALUE, e.g. --set prompt='a red circle'")
        out[key.strip()] = value
    return out


def typed_value(kind: str, key: str, text: str) -> Any:
    """A `--set` value as the input's declared type; a bad one is an error naming the key."""
    t = text.strip()
    if kind == "string":
        return text
    if kind == "integer":
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        raise WorkflowRunError(f"--set {key}={text!r}: input {key!r} is an integer; {text!r} is not one")
    if kind == "number":
        try:
            value = float(t)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return value
        raise WorkflowRunError(f"--set {key}={text!r}: input {key!r} is a number; {text!r} is not a finite number")
    if kind == "boolean":
        if t.lower() in _TRUE | _FALSE:
            return t.lower() in _TRUE
        raise WorkflowRunError(f"--set {key}={text!r}: input {key!r} is true/false; use true or false")
    if kind == "image":
        if not t:
            raise WorkflowRunError(f"--set {key}=: input {key!r} is a picture; give the path of a PNG or JPEG file")
        return text
    if kind == "audio":
        if not t:
            raise WorkflowRunError(f"--set {key}=: input {key!r} is a recording; give the path of a WAV or FLAC file")
        return text
    raise WorkflowRunError(f"input {key!r} has an unknown type {kind!r}")


def _file_path(wf: WorkflowFile, value: str) -> Path:
    """A picture or sound path from the file, relative to the file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() or wf.base_dir is None else wf.base_dir / p


def resolve_inputs(wf: WorkflowFile, sets: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(values, recorded)`: each input's value (pictures loaded) and what the manifest records for it.

    `--set` paths are relative to the current folder, defaults in the file to the file's folder."""
    for key in sets:
        if key not in wf.inputs:
            close = difflib.get_close_matches(key, list(wf.inputs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(wf.inputs) or "none"
            raise WorkflowRunError(f"--set {key}=...: {wf.name!r} has no input {key!r}{hint} (its inputs: {known})")
    missing = [k for k, spec in wf.inputs.items() if spec.required and k not in sets]
    if missing:
        raise WorkflowRunError("no value for input " + ", ".join(repr(k) for k in missing) + "; give it with "
                               + " ".join(f"--set {k}=VALUE" for k in missing))
    values: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for key, spec in wf.inputs.items():
        file = spec.type in FILE_KINDS
        if key in sets:
            value = typed_value(spec.type, key, sets[key])
            path = Path(value).expanduser() if file else None
            origin = f"--set {key}"
        else:
            value = spec.default
            path = _file_path(wf, value) if file else None
            origin = f"input {key!r} (default)"
        recorded[key] = value
        if path is not None:
            value = _load_file(spec.type, path, origin)
        values[key] = value
    return values, recorded


def _load_file(kind: str, path: Path, origin: str) -> Any:
    """A picture input loaded; a recording checked readable and kept as its path (its words may sit beside
    it, `ref.txt` by `ref.wav`)."""
    try:
        if kind == "image":
            return load_image(path)
        load_audio(path)
        return str(path)
    except LatentLMError as e:
        raise WorkflowRunError(f"{origin}: {e}") from None


# ---- output folder -------------------------------------------------------------------------------------
def default_output_dir(name: str, now: _dt.datetime | None = None, root: Path = OUTPUTS_ROOT) -> Path:
    """`outputs/<name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... when that folder exists."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = root / f"{name}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def prepare_output_dir(out: Path) -> list[Path]:
    """Create `out` (and its parents) and test-write it; returns the folders created. One-line error if not."""
    created = []
    missing = []
    p = out
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} is a file")
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        _remove_empty(created)
        reason = e.strerror or str(e) or type(e).__name__
        raise WorkflowRunError(f"cannot write the outputs to {out} ({reason}); give -o a folder you can write to") \
            from None
    return created


def _remove_empty(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


# ---- hashing ---------------------------------------------------------------------------------------------
def model_record(model: str) -> dict:
    """The model's name, resolved checkpoint folder and the sha256 of its weights file."""
    from latentlm.checkpoint import WEIGHTS_FILE, resolve_checkpoint, sha256_file

    directory = resolve_checkpoint(model)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise WorkflowRunError(f"model {model!r}: {weights} is missing; a checkpoint folder needs {WEIGHTS_FILE}")
    return {"name": str(model), "checkpoint": str(directory), "weights_sha256": sha256_file(weights)}


# ---- running -----------------------------------------------------------------------------------------------
def _resolve(value: Any, values: dict) -> Any:
    if isinstance(value, Ref):
        return values["inputs"][value.name] if value.scope == "inputs" else values["steps"][value.name][value.field]
    if isinstance(value, Template):
        return value.render(lambda r: _resolve(r, values))
    return value


def _known_before_running(value: Any) -> bool:
    if isinstance(value, Ref):
        return value.scope == "inputs"
    if isinstance(value, Template):
        return all(not isinstance(p, Ref) or p.scope == "inputs" for p in value.parts)
    return True


def step_arguments(wf: WorkflowFile, step, values: dict, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A step's arguments with references resolved; literal file paths as `_check_steps_before_running`
    made them (pictures loaded, sound paths relative to the file)."""
    args = {}
    for key, value in step.arguments.items():
        if key in files.get(step.id, {}):
            args[key] = files[step.id][key]
        else:
            args[key] = _resolve(value, values)
    return args


def _check_steps_before_running(wf: WorkflowFile, values: dict) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Validate what each step gets from literals and inputs (no model); load literal picture paths and check
    literal sound paths (relative to the file). Also the notes on arguments known now that the model was not
    trained on ("step 'a': ..."), as `Session.vet` gives."""
    from pydantic import ValidationError

    files: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for step in wf.steps:
        workflow = get(step.uses)
        known = {}
        for key, value in step.arguments.items():
            info = workflow.Inputs.model_fields[key]
            if not _known_before_running(value):
                continue
            kind = target_kind(info)
            if kind in FILE_KINDS and isinstance(value, str):
                loaded = _load_file(kind, _file_path(wf, value), f"step {step.id!r} ({step.uses}): {key}")
                files.setdefault(step.id, {})[key] = loaded
                continue
            known[key] = _resolve(value, values)
        try:
            workflow.Inputs.model_validate(known)
        except ValidationError as e:
            for err in e.errors():
                loc = tuple(err["loc"])
                if loc and loc[0] in known:
                    where = ".".join(map(str, loc))
                    raise WorkflowRunError(f"step {step.id!r} ({step.uses}): {where}: "
                                           f"{err['msg'].removeprefix('Value error, ')}"
                                           f" (got {known[loc[0]]!r})") from None
        notes += [f"step {step.id!r}: {note}" for note in workflow.notes(known)]
    return files, notes


SAMPLING = ("steps", "cfg_scale", "temperature")  # a step's own sampling arguments, recorded with it
MEDIA = (Image.Image, Sound)  # values written as files (pictures as PNG, speech as WAV)


class _Files:
    """What a run writes into its folder: each file's sha256 (relative path -> digest), and the names by
    which the manifest refers to pictures and speech (id of the object -> file or input path)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.sha256: dict[str, str] = {}
        self.names: dict[int, str] = {}

    def write(self, rel: str, data: bytes) -> str:
        atomic_write(self.out_dir / rel, lambda f: f.write(data))
        self.sha256[rel] = hashlib.sha256(data).hexdigest()
        return self.sha256[rel]

    def media(self, value: Image.Image | Sound, stem: str) -> dict:
        """A picture as `stem.png` or speech as `stem.wav`; -> its manifest record."""
        if isinstance(value, Image.Image):
            rel = f"{stem}.png"
            record = {"type": "image", "file": rel, "sha256": self.write(rel, _png_bytes(value)),
                      "width": value.width, "height": value.height}
        else:
            rel = f"{stem}.wav"
            record = {"type": "audio", "file": rel, "sha256": self.write(rel, wav_bytes(*value)),
                      "sample_rate": value.sample_rate, "seconds": round(value.seconds, 3)}
        self.names.setdefault(id(value), rel)
        return record

    def output(self, name: str, value: Any) -> dict:
        """An output: a file for a picture, speech or text, the JSON value otherwise."""
        if isinstance(value, MEDIA):
            return self.media(value, name)
        if isinstance(value, str):
            rel = f"{name}.txt"
            return {"type": "text", "file": rel, "sha256": self.write(rel, value.encode("utf-8")), "value": value}
        return {"type": "value", "value": _jsonable(value, self.names)}


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jsonable(value: Any, picture_names: dict[int, str]) -> Any:
    if isinstance(value, Image.Image):
        return picture_names.get(id(value), f"<picture {value.width}x{value.height}>")
    if isinstance(value, Sound):
        return picture_names.get(id(value), f"<speech {value.seconds:.2f} s at {value.sample_rate} Hz>")
    if isinstance(value, Entity):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, picture_names) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, picture_names) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return repr(value)


def _output_value(result, field: str) -> Any:
    """A step's output field as later steps and the outputs see it: speech as a `Sound` (wave and rate)."""
    if field == "image":
        return result.image
    if field == "audio" and result.audio is not None:
        return Sound(result.audio, result.sample_rate)
    return getattr(result, field, None)


def run_workflow(wf: WorkflowFile, *, model: str = "shapes-tiny", out: str | os.PathLike | None = None,
                 sets: Iterable[str] | dict[str, str] = (), session=None, progress: bool = False,
                 prompting: str | None = None, strict: bool = False, speech_model: str | None = None) -> RunOutcome:
    """Run a checked workflow file through `Session.call`, write its outputs and manifest; see the module doc.

    `speech_model`: a second model for the text-to-speech steps (`Session(speech_model=...)`), recorded in
    the manifest beside `model`.

    Arguments the model was not trained on (known before running: literals and inputs) are warnings in the
    manifest and `RunOutcome.warnings`; `strict=True` refuses them (a `WorkflowRunError`) before any model work.

    `session`, when given, must hold `model` (it is what the manifest names and hashes). `prompting`
    overrides the file's `prompting:` (and a given session's) for this run; in-context steps record
    their trace in the manifest and their demonstration pictures as `icl/<step id>_demo<j>.png`."""
    from latentlm import __version__
    from latentlm.workflows.session import Session

    sets = dict(sets) if isinstance(sets, dict) else parse_sets(sets)
    input_values, recorded_inputs = resolve_inputs(wf, sets)
    values: dict[str, Any] = {"inputs": input_values, "steps": {}}
    literal_files, notes = _check_steps_before_running(wf, values)
    if notes and strict:
        raise WorkflowRunError(" ".join(notes) + " (strict: nothing was run; without --strict it runs with a warning)")
    out_dir = Path(out) if out is not None else default_output_dir(wf.name)
    created = prepare_output_dir(out_dir)
    try:
        model_info = model_record(model)
        speech_info = model_record(speech_model) if speech_model is not None else None
        session = session if session is not None else Session(model, progress=progress, speech_model=speech_model)
        prompting = prompting or wf.prompting or session.prompting
        previous = session.prompting
        session.prompting = prompting
        try:
            steps, step_args, icl_pictures = _run_steps(wf, session, values, literal_files)
        finally:
            session.prompting = previous
    except BaseException:
        _remove_empty(created)
        raise
    out_values = {name: _resolve(ref, values) for name, ref in wf.outputs.items()}

    written = _Files(out_dir)
    for key, value in input_values.items():
        if isinstance(value, Image.Image):
            written.names[id(value)] = str(recorded_inputs[key])
    for rel, image in icl_pictures.items():
        written.write(rel, _png_bytes(image))
    for step in wf.steps:
        for key, value in literal_files.get(step.id, {}).items():
            if isinstance(value, Image.Image):
                written.names[id(value)] = str(step.arguments[key])
    outputs_record = {name: written.output(name, value) for name, value in out_values.items()}
    # Pictures and speech passed between steps that are not outputs themselves: saved so the manifest can
    # name them.
    for step, args, record in zip(wf.steps, step_args, steps):
        for key, value in args.items():
            ref = step.arguments[key]
            if isinstance(value, MEDIA) and id(value) not in written.names and isinstance(ref, Ref):
                written.media(value, f"steps/{ref.name}.{ref.field}")
        record["inputs"] = _jsonable(args, written.names)

    manifest = {
        "workflow": wf.name,
        "description": wf.description,
        "file": str(wf.source),
        "file_sha256": hashlib.sha256(wf.text.encode("utf-8")).hexdigest(),
        "latentlm_version": __version__,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": model_info,
        **({"speech_model": speech_info} if speech_info else {}),
        "sampling": {"steps": session.steps, "cfg_scale": session.cfg_scale, "temperature": session.temperature},
        "prompting": prompting,
        "inputs": _jsonable(recorded_inputs, {}),
        "steps": steps,
        "warnings": notes,
        "outputs": outputs_record,
        "files": written.sha256,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write(out_dir / "manifest.json", lambda f: f.write(text.encode("utf-8")))
    return RunOutcome(out_dir, manifest, out_values)


def _run_steps(wf: WorkflowFile, session, values: dict, literal_files: dict) -> tuple[list, list, dict]:
    """Call each step in order; -> (step records, their arguments, in-context demonstration pictures)."""
    steps, step_args, icl_pictures = [], [], {}
    for step in wf.steps:
        args = step_arguments(wf, step, values, literal_files)
        result = session.call(step.uses, **args)
        outputs = {f: _output_value(result, f) for f in get(step.uses).Outputs.model_fields}
        values["steps"][step.id] = outputs
        fields = get(step.uses).Inputs.model_fields
        seed = args.get("seed", fields["seed"].default if "seed" in fields else None)
        step_args.append(args)
        steps.append({"id": step.id, "workflow": step.uses, "inputs": None, "seed": seed,
                      "seconds": result.steps[-1]["seconds"] if result.steps else None})
        own = {k: args.get(k, fields[k].default) for k in SAMPLING if k in fields}
        if own:  # a workflow with sampling settings of its own (speech): not the Session's
            steps[-1]["sampling"] = own
        if result.steps and "icl" in result.steps[-1]:
            steps[-1]["icl"] = _renamed(result.steps[-1]["icl"], result.icl_pictures, f"icl/{step.id}_", icl_pictures)
    return steps, step_args, icl_pictures


def _renamed(icl: dict, pictures: dict[str, Image.Image], prefix: str, into: dict[str, Image.Image]) -> dict:
    """A step's in-context trace with its demonstration pictures renamed `{prefix}demo<j>.png` (a Result
    numbers them by its own steps; a workflow file's steps have ids), the pictures added to `into`."""
    demos = []
    for j, demo in enumerate(icl["demonstrations"]):
        old = demo["picture"]
        if old is not None:
            demo = {**demo, "picture": f"{prefix}demo{j}.png"}
            into[demo["picture"]] = pictures[old]
        demos.append(demo)
    return {**icl, "demonstrations": demos}


def run_workflow_file(path: str | os.PathLike, *, model: str = "shapes-tiny", out: str | os.PathLike | None = None,
                      sets: Iterable[str] | dict[str, str] = (), session=None, progress: bool = False,
                      prompting: str | None = None, strict: bool = False,
                      speech_model: str | None = None) -> RunOutcome:
    """Check the file (every problem at once, as a `WorkflowFileError`), then `run_workflow`."""
    return run_workflow(load_workflow_file(path), model=model, out=out, sets=sets, session=session,
                        progress=progress, prompting=prompting, strict=strict, speech_model=speech_model)
