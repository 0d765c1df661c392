"""Loading pydantic configs from YAML, with errors that point at the offending line."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from latentlm.backbones import BACKBONE_CONFIGS
from latentlm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _locate(node: yaml.Node | None, loc: tuple) -> tuple[int | None, tuple]:
    """1-based line of the YAML node at pydantic location `loc` (or its nearest parent), and the part
    of `loc` that names keys of the file (a discriminated union's tag, e.g. the backbone kind, is not one)."""
    line = node.start_mark.line + 1 if node is not None else None
    shown = []
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key]
            if not match:
                if key not in BACKBONE_CONFIGS:  # a backbone kind is the union's tag, not a key of the file
                    shown.append(key)
                continue
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            shown.append(key)
            continue
        shown.append(key)
        line = node.start_mark.line + 1
    return line, tuple(shown)


def parse_yaml(text: str, source: str) -> tuple[dict, yaml.Node | None]:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise ConfigError(f"{source}: invalid YAML at {where}: {e.problem}; fix the syntax there") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data, node


def validate(model: type[M], data: dict, source: str, node: yaml.Node | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        line, loc = _locate(node, tuple(err["loc"]))
        where = f" (line {line})" if line else ""
        key = ".".join(str(p) for p in loc) or "<top>"
        raise ConfigError(f"{source}{where}: {key}: {err['msg']}") from None


def load_yaml_config(path: str | Path, model: type[M]) -> M:
    """Read `path` as YAML and validate it into `model`, reporting the line of any error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass the path of a YAML config")
    data, node = parse_yaml(p.read_text(), str(p))
    return validate(model, data, str(p), node)
