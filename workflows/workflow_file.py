"""Workflow files: a YAML list of workflow calls whose outputs feed later calls.

    name: describe-and-speak
    description: Draw a picture of a prompt, then describe it.
    inputs:
      prompt: {type: string, default: "a red circle above a blue square"}
    steps:
      - id: draw
        uses: text-to-image
        with: {prompt: "${{ inputs.prompt }}", seed: 3}
      - id: look
        uses: caption
        with: {image: "${{ steps.draw.outputs.image }}"}
    outputs:
      picture: "${{ steps.draw.outputs.image }}"
      caption: "${{ steps.look.outputs.text }}"

Schema (every mapping is closed: an unknown key is an error):

- top level: `name` (required; letters, digits, '-', '_', '.'; it names the output folder),
  `description` (text; its first line is what `latentlm run --list` shows), `inputs`, `steps`
  (required, a non-empty list, run in order), `outputs` (required, a non-empty mapping),
  `prompting` (`direct`, the default, or `autoicl`: how the reading and drawing steps prompt the
  model, as `Session(prompting=...)`; few-shot needs demonstrations, which a file cannot give yet).
- `inputs: {NAME: {type, default?, description?}}` with `type` one of string, integer, number,
  boolean, image (a picture file path), audio (a sound file path: a voice recording); relative paths
  in the file are relative to the workflow file. An input without a default must be given with
  `--set NAME=VALUE`.
- a step: `id` (required, unique, a name), `uses` (required, a registered workflow), `with` (its
  arguments, checked against the workflow's `Inputs`), `name` (a label).
- a value that is exactly one `${{ EXPR }}` passes the object itself (a picture stays a picture, a
  spoken `audio` output stays a recording that a later step's `voice` can take);
  `${{ EXPR }}` inside longer text is interpolated with `str()` (None as ""). EXPR is
  `inputs.NAME` or `steps.ID.outputs.FIELD` of an earlier step (FIELD one of that workflow's Outputs).
- `outputs: {NAME: "${{ EXPR }}" or text with ${{ }} in it}`, NAME a name (it names the output file).

`parse_workflow` never raises on a bad file: it returns every problem as a `FileError(line, column,
where, what)`, 1-based, found by walking the nodes of `yaml.compose`. `load_workflow_file` raises
one `WorkflowFileError` whose message is all of them, one `FILE:LINE:COL: where: what` per line.
PyYAML keeps the last of two equal keys silently; `DuplicateKeyLoader` records them instead.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from PIL import Image

from latentlm.errors import LatentLMError
from latentlm.images import load_image
from latentlm.workflows import builtin  # noqa: F401 - registers the built-in workflows
from latentlm.workflows.registry import Workflow, get, is_recording_field

INPUT_TYPES = ("string", "integer", "number", "boolean", "image", "audio")
TOP_KEYS = {"name": True, "description": False, "inputs": False, "steps": True, "outputs": True, "prompting": False}
FILE_PROMPTINGS = ("direct", "autoicl")  # Session's promptings a file can choose (fewshot needs demonstrations)
STEP_KEYS = {"id": True, "uses": True, "with": False, "name": False}
INPUT_KEYS = {"type": True, "default": False, "description": False}

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # input names, step ids, output names
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # the workflow's name (an output folder)
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
OPEN = "${{"

# How a kind of value reads in messages.
KIND_WORDS = {"string": "text", "integer": "an integer", "number": "a number", "boolean": "true/false",
              "image": "a picture", "audio": "a recording", "any": "any value"}
FILE_KINDS = {"image": "picture", "audio": "sound"}  # kinds given as a file path: the file's word
MAX_ITEMS, MAX_DEPTH = 10_000, 64  # a literal `with` value larger or deeper than this is refused


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True, order=True)
class FileError:
    """One problem in a workflow file: 1-based line and column, the dotted path, what is wrong."""

    line: int
    col: int
    where: str
    what: str

    def format(self, source: str) -> str:
        """One line: line breaks and other unprintable characters (also in the file's name) escaped."""
        text = f"{source}:{self.line}:{self.col}: {self.where}: {self.what}"
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class WorkflowFileError(LatentLMError):
    """A workflow file with problems; the message is one `FILE:LINE:COL: where: what` line per problem."""

    def __init__(self, source: str, errors: list[FileError]):
        self.source = source
        self.errors = sorted(errors)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [e.format(self.source) for e in self.errors]


# ---- the typed file ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """`${{ inputs.NAME }}` (scope 'inputs') or `${{ steps.ID.outputs.FIELD }}` (scope 'steps')."""

    scope: str
    name: str
    field: str | None = None

    def __str__(self) -> str:
        return f"inputs.{self.name}" if self.scope == "inputs" else f"steps.{self.name}.outputs.{self.field}"


@dataclass(frozen=True)
class Template:
    """Text with `${{ }}` references in it, interpolated with `str()` (None as "")."""

    parts: tuple[str | Ref, ...]

    def render(self, resolve: Callable[[Ref], Any]) -> str:
        out = []
        for part in self.parts:
            value = resolve(part) if isinstance(part, Ref) else part
            out.append("" if value is None else str(value))
        return "".join(out)

    def __str__(self) -> str:
        return "".join(f"${{{{ {p} }}}}" if isinstance(p, Ref) else p for p in self.parts)


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # one of INPUT_TYPES
    default: Any = NO_DEFAULT
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is NO_DEFAULT


@dataclass(frozen=True)
class StepSpec:
    id: str
    uses: str
    arguments: dict[str, Any]  # literal values, `Ref`s and `Template`s
    label: str = ""
    line: int = 0

    @property
    def workflow(self) -> Workflow:
        return get(self.uses)


@dataclass(frozen=True)
class WorkflowFile:
    source: str  # the path as given (or a label)
    name: str
    description: str
    inputs: dict[str, InputSpec]
    steps: tuple[StepSpec, ...]
    outputs: dict[str, Ref | Template]
    base_dir: Path | None = None  # relative picture and sound paths in the file are relative to this
    text: str = field(default="", repr=False)
    prompting: str | None = None  # None: the Session's own (direct unless told otherwise)

    @property
    def summary(self) -> str:
        """The description's first line."""
        return self.description.strip().splitlines()[0] if self.description.strip() else ""

    def to_dict(self) -> dict:
        """The validated file as plain data (references as their `${{ }}` text)."""
        def show(v):
            return f"${{{{ {v} }}}}" if isinstance(v, Ref) else str(v) if isinstance(v, Template) else v

        return {
            "name": self.name, "description": self.description,
            **({} if self.prompting is None else {"prompting": self.prompting}),
            "inputs": {k: {"type": s.type, **({} if s.required else {"default": s.default})}
                       for k, s in self.inputs.items()},
            "steps": [{"id": s.id, "uses": s.uses, "with": {k: show(v) for k, v in s.arguments.items()}}
                      for s in self.steps],
            "outputs": {k: show(v) for k, v in self.outputs.items()},
        }


# ---- YAML with duplicate keys recorded ------------------------------------------------------------
class DuplicateKeyLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings record repeated keys, with their marks, instead of keeping the last silently.

    `duplicates` holds `(repeated key node, first key node, key, mapping node)`. Keys brought in by a merge (`<<:`)
    may be overridden, as YAML allows; only keys written twice in the same mapping count.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.Node, yaml.Node, Any, yaml.Node]] = []
        self._recorded: set[int] = set()
        self._pairs: dict[int, list[tuple[Any, yaml.Node, yaml.Node]]] = {}

    def mapping_pairs(self, node: yaml.MappingNode) -> list[tuple[Any, yaml.Node, yaml.Node]]:
        """`(key, key node, value node)` per key, merges applied, the last of repeated keys kept.

        Raises `yaml.MarkedYAMLError` (or ValueError, for e.g. an impossible date) for a key that
        cannot be constructed."""
        if id(node) in self._pairs:
            return self._pairs[id(node)]
        own = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in own:
            key = self._key(node, key_node)
            if key in first and id(key_node) not in self._recorded:
                self._recorded.add(id(key_node))
                self.duplicates.append((key_node, first[key], key, node))
            first.setdefault(key, key_node)
        self.flatten_mapping(node)
        pairs: dict[Any, tuple[Any, yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self._key(node, key_node)
            pairs.pop(key, None)
            pairs[key] = (key, key_node, value_node)
        self._pairs[id(node)] = list(pairs.values())
        return self._pairs[id(node)]

    def _key(self, node: yaml.Node, key_node: yaml.Node) -> Any:
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    "found unhashable key", key_node.start_mark) from None
        return key

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.mapping_pairs(node)  # records repeated keys
        return super().construct_mapping(node, deep=deep)


# ---- checking ---------------------------------------------------------------------------------------
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)
_BAD: Any = object()  # a value that could not be read (its error is already recorded)


def _join(path: str, key: Any) -> str:
    part = key if isinstance(key, str) and NAME.fullmatch(key) else repr(key)
    return f"{path}.{part}" if path else str(part)


def _dym(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"true/false ({_short(value)}; quote it for text)"
    if isinstance(value, int):
        return f"an integer ({_short(value)})"
    if isinstance(value, float):
        return f"a number ({_short(value)})"
    if isinstance(value, str):
        return f"text ({_short(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _node_kind(node: yaml.Node) -> str:
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list" if isinstance(node, yaml.SequenceNode) \
        else "a value"


def is_picture_field(info) -> bool:
    return any(getattr(m, "func", None) is load_image for m in info.metadata)


def target_kind(info) -> str:
    """The kind of value a workflow input field takes: string, integer, number, boolean, image, audio or any."""
    if is_picture_field(info):
        return "image"
    if is_recording_field(info):
        return "audio"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(info.annotation, "any")


def output_kind(name: str, info) -> str:
    """The kind of a workflow output field; pictures are declared `image: Any` (or as PIL images), speech
    `audio: Any`."""
    annotation = info.annotation
    if annotation is Image.Image or (annotation is Any and name == "image"):
        return "image"
    if annotation is Any and name == "audio":
        return "audio"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")


def _compatible(source: str, target: str) -> bool:
    return "any" in (source, target) or source == target or (source, target) == ("integer", "number")


def check_input_value(kind: str, value: Any) -> str | None:
    """Why `value` is not a valid value of an input of `kind`, or None."""
    path = isinstance(value, str) and bool(value.strip())
    ok = {"string": isinstance(value, str), "image": path, "audio": path,
          "integer": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "boolean": isinstance(value, bool)}[kind]
    if ok:
        return None
    want = f"a {FILE_KINDS[kind]} file path" if kind in FILE_KINDS else KIND_WORDS[kind]
    return f"expected {want}, got {_describe(value)}"


class _Checker:
    def __init__(self, text: str, loader: DuplicateKeyLoader, base_dir: Path | None):
        self.text, self.loader, self.base_dir = text, loader, base_dir
        self.errors: list[FileError] = []
        self.inputs: dict[str, InputSpec] = {}
        self.input_nodes: dict[str, yaml.Node] = {}
        self.step_ids: dict[str, int] = {}  # id -> index of its first step
        self.step_workflows: dict[str, Workflow | None] = {}
        self.n_steps = 0  # step entries in the file, good or bad
        self.steps_listed = False  # whether `steps` is a list (else references to steps are not checked)
        self.paths: dict[int, str] = {}  # id(mapping node) -> its dotted path, for duplicate keys

    # -- reporting --
    def error(self, at: yaml.Node | yaml.Mark | tuple[int, int], where: str, what: str) -> None:
        if isinstance(at, yaml.Node):
            at = at.start_mark
        if isinstance(at, yaml.Mark):
            at = (at.line + 1, at.column + 1)
        self.errors.append(FileError(at[0], at[1], where or "<top>", what))

    def mark_in(self, node: yaml.Node, offset: int) -> tuple[int, int]:
        """Line and column of character `offset` of a scalar's value, where the source shows it as is."""
        start, end = node.start_mark, node.end_mark
        source = self.text[start.index:end.index]
        value = node.value
        if "\n" not in source and "\r" not in source:
            if node.style in (None, "") and source == value:
                return start.line + 1, start.column + 1 + offset
            if node.style in ("'", '"') and source == node.style + value + node.style:
                return start.line + 1, start.column + 2 + offset
        return start.line + 1, start.column + 1

    # -- reading nodes --
    def pairs(self, node: yaml.MappingNode, path: str) -> list[tuple[Any, yaml.Node, yaml.Node]]:
        self.paths.setdefault(id(node), path)
        try:
            return self.loader.mapping_pairs(node)
        except _CONSTRUCT_ERRORS as e:
            self.construct_error(e, node, path)
            self.loader._pairs[id(node)] = []
            return []

    def construct_error(self, e: Exception, node: yaml.Node, path: str) -> None:
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
            self.error(e.problem_mark, path, f"cannot read this value: {e.problem}")
        elif isinstance(e, RecursionError):
            self.error(node, path, "cannot read this value: it is nested too deeply")
        else:
            self.error(node, path, f"cannot read this value: {' '.join(str(e).split())}")

    def value(self, node: yaml.Node, path: str) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as e:
            self.construct_error(e, node, path)
            return _BAD
        problem = _plain_problem(value)
        if problem:
            self.error(node, path, problem)
            return _BAD
        return value

    def fields(self, node: yaml.Node, path: str, spec: dict[str, bool], what: str) -> dict[str, tuple]:
        """The known keys of a closed mapping; unknown and missing keys are reported."""
        out: dict[str, tuple] = {}
        for key, key_node, value_node in self.pairs(node, path):
            if not isinstance(key, str):
                self.error(key_node, _join(path, key), f"a key must be a name, got {_describe(key)}")
            elif key not in spec:
                self.error(key_node, _join(path, key),
                           f"unknown key{_dym(key, spec)} ({what} takes: {', '.join(spec)})")
            else:
                out[key] = (key_node, value_node)
        for key, required in spec.items():
            if required and key not in out:
                self.error(node, _join(path, key), f"required key is missing ({what} needs: "
                                                   f"{', '.join(k for k, r in spec.items() if r)})")
        return out

    def text_field(self, entry: tuple | None, path: str, pattern: re.Pattern | None = None,
                   rule: str = "") -> str | None:
        if entry is None:
            return None
        node = entry[1]
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"expected text, got {_node_kind(node)}")
            return None
        value = self.value(node, path)
        if value is _BAD:
            return None
        if not isinstance(value, str):
            self.error(node, path, f"expected text, got {_describe(value)}")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.error(node, path, f"{_short(value)} is not allowed: {rule}")
            return None
        return value

    # -- the file --
    def check(self, root: yaml.Node | None, source: str) -> WorkflowFile | None:
        if root is None:
            self.error((1, 1), "<top>", "the file is empty; a workflow file needs name, steps and outputs")
            return None
        if not isinstance(root, yaml.MappingNode):
            self.error(root, "<top>", f"expected a mapping with name, steps and outputs, got {_node_kind(root)}")
            return None
        top = self.fields(root, "", TOP_KEYS, "a workflow file")
        name = self.text_field(top.get("name"), "name", FILE_NAME,
                               "use letters, digits, '-', '_' and '.' (it names the output folder)")
        description = self.text_field(top.get("description"), "description") or ""
        prompting = self.prompting_field(top.get("prompting"))
        self.check_inputs(top.get("inputs"))
        steps = self.check_steps(top.get("steps"))
        outputs = self.check_outputs(top.get("outputs"), self.n_steps)
        for key_node, first, key, mapping in self.loader.duplicates:
            where = _join(self.paths.get(id(mapping), ""), key)
            self.error(key_node, where, f"duplicate key {_short(key)} (first at line {first.start_mark.line + 1}, "
                                        f"column {first.start_mark.column + 1}); YAML would keep only the last: "
                                        "remove one")
        if self.errors or name is None or steps is None or outputs is None:
            return None
        return WorkflowFile(source, name, description, dict(self.inputs), steps, outputs, self.base_dir, self.text,
                            prompting)

    def prompting_field(self, entry: tuple | None) -> str | None:
        value = self.text_field(entry, "prompting")
        if value is None or value in FILE_PROMPTINGS:
            return value
        if value == "fewshot":
            what = "fewshot needs demonstrations, which a workflow file cannot give yet; use direct or autoicl"
        else:
            what = f"unknown prompting {_short(value)}{_dym(value, FILE_PROMPTINGS)} (use one of: direct, autoicl)"
        self.error(entry[1], "prompting", what)
        return None

    def check_inputs(self, entry: tuple | None) -> None:
        if entry is None or _is_null(entry[1]):
            return
        node = entry[1]
        if not isinstance(node, yaml.MappingNode):
            self.error(node, "inputs", f"expected a mapping of input names to {{type, default}}, got {_node_kind(node)}")
            return
        for key, key_node, spec_node in self.pairs(node, "inputs"):
            path = _join("inputs", key)
            if not isinstance(key, str) or not NAME.fullmatch(key):
                self.error(key_node, path, f"{_short(key)} is not a valid input name: use letters, digits, '-' "
                                           "and '_', starting with a letter")
                continue
            if not isinstance(spec_node, yaml.MappingNode):
                self.error(spec_node, path, "expected a mapping like {type: string, default: ...}, got "
                                            + _node_kind(spec_node))
                continue
            spec = self.fields(spec_node, path, INPUT_KEYS, "an input")
            kind = self.text_field(spec.get("type"), f"{path}.type")
            if kind is not None and kind not in INPUT_TYPES:
                self.error(spec["type"][1], f"{path}.type",
                           f"unknown type {kind!r}{_dym(kind, INPUT_TYPES)} (use one of: {', '.join(INPUT_TYPES)})")
                kind = None
            default = NO_DEFAULT
            if "default" in spec:
                default = self.value(spec["default"][1], f"{path}.default")
                if default is not _BAD and kind is not None:
                    problem = check_input_value(kind, default)
                    if problem:
                        self.error(spec["default"][1], f"{path}.default", problem)
                        default = _BAD
                    elif kind in FILE_KINDS:
                        self.check_file_path(default, spec["default"][1], f"{path}.default", FILE_KINDS[kind])
                    elif kind == "number":
                        default = float(default)
            description = self.text_field(spec.get("description"), f"{path}.description") or ""
            self.input_nodes[key] = key_node
            if kind is None or default is _BAD:
                self.inputs[key] = InputSpec(key, "any", description=description)  # known, for references
            else:
                self.inputs[key] = InputSpec(key, kind, default, description)

    def check_file_path(self, value: str, node: yaml.Node, path: str, what: str = "picture") -> None:
        if self.base_dir is None:
            return
        p = Path(value).expanduser()
        p = p if p.is_absolute() else self.base_dir / p
        if not p.is_file():
            self.error(node, path, f"{what} file {value!r} does not exist (relative paths are relative to the "
                                   "workflow file)")

    def check_steps(self, entry: tuple | None) -> tuple[StepSpec, ...] | None:
        if entry is None:
            return None
        node = entry[1]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "steps", f"expected a list of steps (- id: ..., uses: ..., with: ...), got "
                                      f"{_node_kind(node)}")
            return None
        if not node.value:
            self.error(node, "steps", "needs at least one step (- id: ..., uses: ..., with: ...)")
            return None
        self.n_steps = len(node.value)
        self.steps_listed = True
        # Pass 1: ids and workflows, so that a reference can tell a later step from an unknown one.
        parsed = []
        for i, step_node in enumerate(node.value):
            path = f"steps.{i}"
            if not isinstance(step_node, yaml.MappingNode):
                self.error(step_node, path, f"expected a step (id: ..., uses: ..., with: ...), got "
                                            f"{_node_kind(step_node)}")
                parsed.append(None)
                continue
            fields = self.fields(step_node, path, STEP_KEYS, "a step")
            step_id = self.text_field(fields.get("id"), f"{path}.id", NAME,
                                      "use letters, digits, '-' and '_', starting with a letter")
            if step_id is not None:
                if step_id in self.step_ids:
                    first = node.value[self.step_ids[step_id]]
                    self.error(fields["id"][1], f"{path}.id", f"duplicate step id {step_id!r} (first at line "
                                                              f"{first.start_mark.line + 1}); ids must be unique")
                else:
                    self.step_ids[step_id] = i
            uses = self.text_field(fields.get("uses"), f"{path}.uses")
            workflow = None
            if uses is not None:
                try:
                    workflow = get(uses)
                except LatentLMError as e:
                    self.error(fields["uses"][1], f"{path}.uses", str(e))
                    uses = None
            if step_id is not None and step_id not in self.step_workflows:
                self.step_workflows[step_id] = workflow
            label = self.text_field(fields.get("name"), f"{path}.name") or ""
            parsed.append((step_node, fields, step_id, uses, workflow, label))
        # Pass 2: arguments, with references to earlier steps only.
        steps = []
        for i, item in enumerate(parsed):
            if item is None:
                continue
            step_node, fields, step_id, uses, workflow, label = item
            arguments = self.check_with(fields.get("with"), step_node, f"steps.{i}", i, workflow)
            if step_id is not None and uses is not None and arguments is not None:
                steps.append(StepSpec(step_id, uses, arguments, label, step_node.start_mark.line + 1))
        return tuple(steps)

    def check_with(self, entry: tuple | None, step_node: yaml.Node, path: str, index: int,
                   workflow: Workflow | None) -> dict | None:
        path = f"{path}.with"
        with_node = entry[1] if entry is not None else None
        pairs = []
        if with_node is not None and not _is_null(with_node):
            if not isinstance(with_node, yaml.MappingNode):
                self.error(with_node, path, f"expected a mapping of the workflow's inputs, got {_node_kind(with_node)}")
                return None
            pairs = self.pairs(with_node, path)
        model_fields = workflow.Inputs.model_fields if workflow is not None else None
        arguments: dict[str, Any] = {}
        literals: dict[str, tuple[Any, yaml.Node]] = {}
        ok = True
        for key, key_node, value_node in pairs:
            where = _join(path, key)
            if not isinstance(key, str):
                self.error(key_node, where, f"an input name must be text, got {_describe(key)}")
                ok = False
                continue
            if model_fields is not None and key not in model_fields:
                self.error(key_node, where, f"workflow {workflow.name!r} has no input {key!r}{_dym(key, model_fields)}"
                                            f" (its inputs: {', '.join(model_fields)})")
                ok = False
                continue
            value = self.value(value_node, where)
            if value is _BAD:
                ok = False
                continue
            info = model_fields[key] if model_fields is not None else None
            parsed = self.parse_value(value, value_node, where, index) if isinstance(value, str) else value
            if parsed is _BAD:
                ok = False
                continue
            if not isinstance(value, str):
                nested = _nested_expression(value)
                if nested:
                    self.error(value_node, where, "a ${{ }} reference must be the whole value or inside its text, "
                                                  "not nested in a list or mapping")
                    ok = False
                    continue
            arguments[key] = parsed
            if info is None:
                continue
            if isinstance(parsed, (Ref, Template)):
                if not self.check_kind(parsed, target_kind(info), value_node, where, workflow.name, key):
                    ok = False
            elif target_kind(info) in FILE_KINDS:
                what = FILE_KINDS[target_kind(info)]
                if not isinstance(parsed, str) or not parsed.strip():
                    self.error(value_node, where, f"{key!r} takes a {what}: give a file path or a ${{{{ }}}} "
                                                  f"reference, not {_describe(parsed)}")
                    ok = False
                else:
                    self.check_file_path(parsed, value_node, where, what)
            else:
                literals[key] = (parsed, value_node)
        if model_fields is not None:
            for key, info in model_fields.items():
                if info.is_required() and key not in arguments and not any(k == key for k, _, _ in pairs):
                    at = with_node if with_node is not None else step_node
                    self.error(at, _join(path, key), f"required input of workflow {workflow.name!r} is missing")
                    ok = False
            if literals and not self.check_literals(workflow, literals, path):
                ok = False
        return arguments if ok and workflow is not None else None

    def check_literals(self, workflow: Workflow, literals: dict[str, tuple[Any, yaml.Node]], path: str) -> bool:
        from pydantic import ValidationError

        try:
            workflow.Inputs.model_validate({k: v for k, (v, _) in literals.items()})
            return True
        except ValidationError as e:
            errors = e.errors()
        except Exception as e:  # noqa: BLE001 - a validator that fails on an odd value is still a bad value
            first = next(iter(literals.values()))[1]
            self.error(first, path, f"invalid value: {' '.join(str(e).split())}")
            return False
        ok = True
        for err in errors:
            loc = tuple(err["loc"])
            if not loc or loc[0] not in literals:
                continue  # a field given by reference, or missing (reported already)
            node = self.node_at(literals[loc[0]][1], loc[1:])
            msg = err["msg"].removeprefix("Value error, ")
            self.error(node, ".".join([path, *map(str, loc)]), msg)
            ok = False
        return ok

    def node_at(self, node: yaml.Node, loc: tuple) -> yaml.Node:
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                match = [v for k, _, v in self.loader._pairs.get(id(node), []) if k == key]
                if not match:
                    break
                node = match[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
            else:
                break
        return node

    def parse_value(self, value: str, node: yaml.Node, where: str, index: int) -> Any:
        """Literal text, a `Ref` (exactly one `${{ }}`) or a `Template`; `index` is the step using it."""
        matches = list(EXPRESSION.finditer(value))
        spans = [m.span() for m in matches]
        ok = True
        pos = value.find(OPEN)
        while pos >= 0:
            if not any(a <= pos < b for a, b in spans):
                self.error(self.mark_in(node, pos), where, "unterminated ${{ expression: close it with }}")
                ok = False
                break
            pos = value.find(OPEN, pos + 1)
        if not matches:
            return value if ok else _BAD
        parts: list[str | Ref] = []
        starts: dict[int, int] = {}  # part index -> offset of its ${{
        last = 0
        for m in matches:
            ref = self.reference(m.group(1), self.mark_in(node, m.start()), where, index)
            if ref is None:
                ok = False
            if m.start() > last:
                parts.append(value[last:m.start()])
            starts[len(parts)] = m.start()
            parts.append(ref)
            last = m.end()
        if last < len(value):
            parts.append(value[last:])
        if not ok:
            return _BAD
        if len(parts) == 1:
            return parts[0]
        for i, part in enumerate(parts):
            if isinstance(part, Ref) and self.kind_of(part) in FILE_KINDS:
                self.error(self.mark_in(node, starts[i]), where,
                           f"{part} is {KIND_WORDS[self.kind_of(part)]}: pass it as the whole value "
                           f"(\"${{{{ {part} }}}}\"), not inside text")
                return _BAD
        return Template(tuple(parts))

    def reference(self, expression: str, at: tuple[int, int], where: str, index: int) -> Ref | None:
        expr = expression.strip()
        parts = expr.split(".")
        if len(parts) == 2 and parts[0] == "inputs" and parts[1]:
            name = parts[1]
            if name not in self.inputs:
                known = ", ".join(self.inputs) or "none"
                self.error(at, where, f"unknown input {name!r} in ${{{{ {expr} }}}}{_dym(name, self.inputs)} "
                                      f"(the file's inputs: {known})")
                return None
            return Ref("inputs", name)
        if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs" and parts[1] and parts[3]:
            step_id, out = parts[1], parts[3]
            if not self.steps_listed:
                return Ref("steps", step_id, out)  # `steps` itself is wrong (reported); no second guess here
            if step_id not in self.step_ids:
                earlier = [s for s, j in self.step_ids.items() if j < index]
                self.error(at, where, f"unknown step {step_id!r} in ${{{{ {expr} }}}}{_dym(step_id, earlier)} "
                                      f"(earlier steps: {', '.join(earlier) or 'none'})")
                return None
            j = self.step_ids[step_id]
            if j == index:
                self.error(at, where, f"step {step_id!r} cannot use its own outputs (${{{{ {expr} }}}})")
                return None
            if j > index:
                self.error(at, where, f"forward reference: step {step_id!r} runs later (it is steps.{j}); "
                                      "a step can only use the outputs of earlier steps")
                return None
            workflow = self.step_workflows.get(step_id)
            if workflow is not None and out not in workflow.Outputs.model_fields:
                outs = workflow.Outputs.model_fields
                self.error(at, where, f"workflow {workflow.name!r} (step {step_id!r}) has no output {out!r}"
                                      f"{_dym(out, outs)} (its outputs: {', '.join(outs)})")
                return None
            return Ref("steps", step_id, out)
        self.error(at, where, f"cannot read ${{{{ {' '.join(expr.split())} }}}}: use ${{{{ inputs.NAME }}}} or "
                              "${{ steps.ID.outputs.NAME }}")
        return None

    def kind_of(self, ref: Ref) -> str:
        if ref.scope == "inputs":
            return self.inputs[ref.name].type
        workflow = self.step_workflows.get(ref.name)
        if workflow is None:
            return "any"
        return output_kind(ref.field, workflow.Outputs.model_fields[ref.field])

    def check_kind(self, value: Ref | Template, target: str, node: yaml.Node, where: str, workflow: str,
                   key: str) -> bool:
        source = "string" if isinstance(value, Template) else self.kind_of(value)
        if _compatible(source, target):
            return True
        what = "this text" if isinstance(value, Template) else str(value)
        self.error(self.mark_in(node, 0), where, f"{what} is {KIND_WORDS[source]}, but input {key!r} of workflow "
                                                 f"{workflow!r} takes {KIND_WORDS[target]}")
        return False

    def check_outputs(self, entry: tuple | None, n_steps: int) -> dict | None:
        if entry is None:
            return None
        node = entry[1]
        if not isinstance(node, yaml.MappingNode):
            self.error(node, "outputs", "expected a mapping of output names to ${{ ... }} references, got "
                                        + _node_kind(node))
            return None
        if not node.value:
            self.error(node, "outputs", "needs at least one output, e.g. picture: ${{ steps.ID.outputs.image }}")
            return None
        pairs = self.pairs(node, "outputs")
        outputs: dict[str, Any] = {}
        ok = True
        for key, key_node, value_node in pairs:
            where = _join("outputs", key)
            if not isinstance(key, str) or not NAME.fullmatch(key):
                self.error(key_node, where, f"{_short(key)} is not a valid output name: use letters, digits, '-' "
                                            "and '_', starting with a letter (it names the output file)")
                ok = False
                continue
            value = self.value(value_node, where)
            if value is _BAD:
                ok = False
                continue
            if not isinstance(value, str) or OPEN not in value:
                self.error(value_node, where, "an output is a ${{ ... }} reference (or text with one in it), "
                                              f"e.g. \"${{{{ steps.ID.outputs.image }}}}\"; got {_describe(value)}")
                ok = False
                continue
            parsed = self.parse_value(value, value_node, where, n_steps)
            if parsed is _BAD:
                ok = False
                continue
            outputs[key] = parsed
        return outputs if ok else None


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _plain_problem(value: Any) -> str | None:
    """Why a constructed value is not plain data (text, numbers, true/false, null, lists, mappings), or None."""
    budget = [MAX_ITEMS]

    def walk(v: Any, depth: int, path: set[int]) -> str | None:
        budget[0] -= 1
        if budget[0] < 0:
            return f"this value is too large (over {MAX_ITEMS} items)"
        if depth > MAX_DEPTH:
            return f"this value is nested too deeply (over {MAX_DEPTH} levels)"
        if v is None or isinstance(v, (str, bool, int, float)):
            return None
        if isinstance(v, (list, dict)):
            if id(v) in path:
                return "this value refers to itself (a recursive alias)"
            path = path | {id(v)}
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, (str, int, float, bool)) and k is not None:
                        return f"unsupported key {_short(k)}: keys are text or numbers"
                    problem = walk(item, depth + 1, path)
                    if problem:
                        return problem
            else:
                for item in v:
                    problem = walk(item, depth + 1, path)
                    if problem:
                        return problem
            return None
        return (f"unsupported value ({type(v).__name__}): use text, numbers, true/false, null, lists or mappings "
                "(quote dates and other special values)")

    return walk(value, 0, set())


def _nested_expression(value: Any) -> bool:
    if isinstance(value, str):
        return OPEN in value
    if isinstance(value, list):
        return any(_nested_expression(v) for v in value)
    if isinstance(value, dict):
        return any(_nested_expression(v) for v in value.values())
    return False


# ---- entry points -------------------------------------------------------------------------------------
def _position(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


def parse_workflow(text: str, source: str = "<workflow>",
                   base_dir: Path | None = None) -> tuple[WorkflowFile | None, list[FileError]]:
    """Parse and check a workflow file's text: `(WorkflowFile, [])`, or `(None, every problem)`. Never raises.

    `base_dir`, when given, is where relative picture and sound paths are looked for (and checked to exist)."""
    loader = None
    try:
        try:
            loader = DuplicateKeyLoader(text)  # checks for unprintable characters first
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            what = " ".join(str(e.problem or "invalid YAML").split())
            if e.context and e.context_mark is not None:
                what += f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
            at = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            return None, [FileError(at[0], at[1], "yaml", f"invalid YAML: {what}")]
        except yaml.reader.ReaderError as e:
            line, col = _position(text, e.position)
            c = e.character
            shown = f"{chr(c)!r} (#x{c:04x})" if isinstance(c, int) else repr(c)
            what = f"invalid YAML: unacceptable character {shown}: {e.reason}"
            return None, [FileError(line, col, "yaml", what)]
        except yaml.YAMLError as e:
            return None, [FileError(1, 1, "yaml", f"invalid YAML: {' '.join(str(e).split())}")]
        except RecursionError:
            return None, [FileError(1, 1, "yaml", "invalid YAML: nested too deeply")]
        checker = _Checker(text, loader, base_dir)
        try:
            wf = checker.check(root, source)
        except RecursionError:
            checker.errors.append(FileError(1, 1, "<top>", "nested too deeply"))
            wf = None
        return wf, sorted(checker.errors)
    finally:
        if loader is not None:
            loader.dispose()


def read_workflow_text(path: str | Path) -> tuple[str | None, list[FileError]]:
    """The file's text, or a FileError saying why it cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None, [FileError(1, 1, "<file>", "no such file; give the path of a workflow YAML file")]
    except IsADirectoryError:
        return None, [FileError(1, 1, "<file>", "is a folder; give the path of a workflow YAML file")]
    except ValueError:  # a NUL character in the path
        return None, [FileError(1, 1, "<file>", "not a usable path (it holds a NUL character)")]
    except OSError as e:
        return None, [FileError(1, 1, "<file>", f"cannot read it ({e.strerror or type(e).__name__})")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [FileError(line, col, "<file>", f"not UTF-8 text (byte {data[e.start]:#04x})")]


def check_workflow_file(path: str | Path) -> tuple[WorkflowFile | None, list[FileError]]:
    """Read and check a workflow file without loading any model; never raises."""
    text, errors = read_workflow_text(path)
    if text is None:
        return None, errors
    return parse_workflow(text, str(path), base_dir=Path(path).resolve().parent)


def load_workflow_file(path: str | Path) -> WorkflowFile:
    """The checked workflow file, or a `WorkflowFileError` listing every problem."""
    wf, errors = check_workflow_file(path)
    if errors or wf is None:
        raise WorkflowFileError(str(path), errors or [FileError(1, 1, "<top>", "invalid workflow file")])
    return wf


# ---- shipped examples ---------------------------------------------------------------------------------
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def example_files() -> dict[str, Path]:
    """The shipped example workflow files, by file name without `.yaml`."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


__all__ = ["DuplicateKeyLoader", "FileError", "InputSpec", "NO_DEFAULT", "Ref", "StepSpec", "Template",
           "WorkflowFile", "WorkflowFileError", "check_workflow_file", "example_files", "load_workflow_file",
           "parse_workflow"]
