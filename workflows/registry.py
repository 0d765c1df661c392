"""Workflows as typed tools: a name, a one-line description, pydantic inputs and outputs, and `run`.

    @register
    class TextToImage(Workflow):
        name = "text-to-image"
        description = "Draw a picture of a description."
        Inputs = TextToImageInputs      # pydantic model: prompt, seed, ...
        Outputs = ImageOutputs
        def run(self, session, prompt, seed): ...

Registration checks each workflow the way smolagents checks its tools: a kebab-case name, a
one-line description, pydantic `Inputs`/`Outputs`, and a `run(self, session, ...)` whose parameters
are exactly the fields of `Inputs`. A mistake is a `WorkflowDefinitionError` naming the workflow and
the argument. The Session, the YAML runner and the CLI all call workflows through `call`.
"""
from __future__ import annotations

import inspect
import os
import re
from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from latentlm.errors import LatentLMError
from latentlm.images import load_image

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class WorkflowDefinitionError(TypeError):
    """A workflow that is defined wrongly (a bug in its code, not a user error)."""


class WorkflowInputError(LatentLMError):
    """Arguments that do not fit a workflow's inputs."""


class Fields(BaseModel):
    """Base of workflow inputs and outputs: closed (unknown keys are errors), pictures allowed."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


# A picture input: a PIL image, a file path or an array, loaded (and checked) as an RGB PIL image.
Picture = Annotated[Any, AfterValidator(load_image)]


def check_recording(value: Any) -> Any:
    """A voice recording as given: None, a sound file path, or a `(wave, sample_rate)` pair (a `Sound`).
    Kept as given, not read here: the words said in a file may sit beside it (`ref.txt` by `ref.wav`)."""
    if value is None or isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return value
    raise ValueError(f"expected a sound file path or a (wave, sample_rate) pair, got {type(value).__name__}")


# A recording input (a voice prompt): see check_recording.
Recording = Annotated[Any, AfterValidator(check_recording)]


def is_recording_field(info) -> bool:
    return any(getattr(m, "func", None) is check_recording for m in info.metadata)


def _words(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise ValueError("is empty; give some words")
    return text


# Text input: whitespace collapsed, never empty.
Words = Annotated[str, AfterValidator(_words)]


class Workflow(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    Inputs: ClassVar[type[Fields]]
    Outputs: ClassVar[type[Fields]]

    @abstractmethod
    def run(self, session, **inputs) -> Fields:
        """Do the work; the arguments are the fields of `Inputs`, already validated."""

    def call(self, session, arguments: dict[str, Any]) -> Fields:
        """Validate `arguments` against `Inputs`, run, and check the outputs' type."""
        try:
            inputs = self.Inputs.model_validate(arguments)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "inputs"
            msg = err["msg"].removeprefix("Value error, ")
            raise WorkflowInputError(f"workflow {self.name!r}: {where}: {msg}") from None
        out = self.run(session, **{k: getattr(inputs, k) for k in self.Inputs.model_fields})
        if not isinstance(out, self.Outputs):
            raise WorkflowDefinitionError(f"workflow {self.name!r} returned {type(out).__name__}, not its Outputs")
        return out

    def notes(self, arguments: dict[str, Any]) -> list[str]:
        """What the model may not understand in these (literal) arguments: words or forms it never saw in
        training, one line each; [] when there is nothing to say. The Session warns with them, or refuses
        under `strict=True`, before running anything."""
        return []

    @classmethod
    def signature(cls) -> str:
        """`name(arg: type = default, ...)` for listings."""
        args = []
        pictures = picture_fields(cls)
        for name, f in cls.Inputs.model_fields.items():
            kind = "image" if name in pictures else "audio" if is_recording_field(f) else \
                getattr(f.annotation, "__name__", str(f.annotation))
            args.append(f"{name}: {kind}" + ("" if f.is_required() else f" = {f.default!r}"))
        return f"{cls.name}({', '.join(args)})"


def picture_fields(workflow: Workflow | type[Workflow]) -> tuple[str, ...]:
    """The names of a workflow's picture inputs (the fields typed `Picture`)."""
    return tuple(name for name, f in workflow.Inputs.model_fields.items()
                 if any(getattr(m, "func", None) is load_image for m in f.metadata))


REGISTRY: dict[str, Workflow] = {}


def register(cls: type[Workflow]) -> type[Workflow]:
    """Check a workflow class and add one instance of it to `REGISTRY`."""
    name = getattr(cls, "name", None)
    label = name or cls.__name__
    if not isinstance(name, str) or not _NAME.match(name):
        raise WorkflowDefinitionError(f"workflow {label!r}: name must be kebab-case, e.g. 'text-to-image'")
    description = getattr(cls, "description", None)
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise WorkflowDefinitionError(f"workflow {name!r}: needs a one-line description")
    for attr in ("Inputs", "Outputs"):
        model = getattr(cls, attr, None)
        if not (isinstance(model, type) and issubclass(model, Fields)):
            raise WorkflowDefinitionError(f"workflow {name!r}: {attr} must be a subclass of workflows.registry.Fields")
    _check_signature(cls, name)
    if name in REGISTRY and type(REGISTRY[name]) is not cls:
        raise WorkflowDefinitionError(f"workflow {name!r} is registered twice")
    REGISTRY[name] = cls()
    return cls


def _check_signature(cls: type[Workflow], name: str) -> None:
    params = list(inspect.signature(cls.run).parameters.values())[2:]  # after self, session
    fields = cls.Inputs.model_fields
    got = {p.name for p in params}
    for arg in fields:
        if arg not in got:
            raise WorkflowDefinitionError(f"workflow {name!r}: run() lacks the input argument {arg!r}")
    for p in params:
        if p.name not in fields:
            raise WorkflowDefinitionError(f"workflow {name!r}: run() argument {p.name!r} is not one of its Inputs")


def get(name: str) -> Workflow:
    """The registered workflow `name`, or a `LatentLMError` with a did-you-mean."""
    import difflib

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LatentLMError(f"unknown workflow {name!r}{hint} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]
