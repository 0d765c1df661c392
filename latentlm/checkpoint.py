"""Checkpoint directories: `config.json` + `model.safetensors` (+ `tokenizer.model`, codec sub-folders).

Every failure names the file and what is wrong with it. Writes go to a temporary directory that is
renamed into place, so an interrupted save never leaves a half-written checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from latentlm.errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUMS_FILE = "checksums.json"
NO_VERIFY_ENV = "LATENTLM_NO_VERIFY"  # "1": skip checksum checks in this process and its children (--no-verify)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `final` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so that large weights need no extra memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the SHA-256 of every file directly in `directory` in its `checksums.json`.

    Called on the temporary folder of a save, before it is renamed into place, so the manifest is
    written atomically with the files it describes. Loads check against it (`verify_file`): corruption
    that keeps a file's size and header is caught instead of loading silently."""
    sums = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS_FILE}
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")


def verification_enabled(verify: bool = True) -> bool:
    """Whether to check checksums: `verify`, unless $LATENTLM_NO_VERIFY=1 (set by the CLI's --no-verify)."""
    return verify and os.environ.get(NO_VERIFY_ENV, "") in ("", "0")


def _recorded_sums(manifest: Path) -> dict:
    try:
        sums = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest} is unreadable ({type(e).__name__}); copy or save the checkpoint again, "
                              "or pass --no-verify") from None
    if not isinstance(sums, dict):
        raise CheckpointError(f"{manifest} must hold a JSON object; copy or save the checkpoint again, "
                              "or pass --no-verify")
    return sums


def verify_file(path: str | Path, verify: bool = True) -> None:
    """Raise CheckpointError when `path` differs from the SHA-256 recorded beside it in `checksums.json`.

    A folder without a manifest (older checkpoints, the shipped model), a file the manifest does not list
    and a missing file (its loader says so) pass: only a recorded hash that differs is an error."""
    path = Path(path)
    manifest = path.parent / CHECKSUMS_FILE
    if not verification_enabled(verify) or not manifest.is_file() or not path.is_file():
        return
    expected = _recorded_sums(manifest).get(path.name)
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(f"{path} does not match its recorded SHA-256 ({CHECKSUMS_FILE}): the file is corrupt; "
                              "copy or save the checkpoint again, or pass --no-verify")


def verify_dir(directory: str | Path, verify: bool = True) -> None:
    """Check every file that `directory`'s checksums.json lists, and those of its sub-folders' manifests.

    For folders read whole (training checkpoints): a listed file that is missing is an error too. A folder
    without a manifest (saved before checksums existed) passes."""
    directory = Path(directory)
    if not verification_enabled(verify):
        return
    for manifest in sorted(directory.rglob(CHECKSUMS_FILE)):
        for name in _recorded_sums(manifest):
            path = manifest.parent / name
            if not path.is_file():
                raise CheckpointError(f"{path} is missing but listed in {manifest}: the checkpoint is incomplete; "
                                      "save it again or use an older one")
            verify_file(path)


def write_config(directory: Path, config: dict) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(directory: str | Path, verify: bool = True) -> dict:
    """The checkpoint's config.json as a dict, checked against its recorded SHA-256 when `verify`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint directory needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    verify_file(path, verify)
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, save it again") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the checkpoint is corrupt, save it again")
    return config


def _own_state(module: nn.Module, exclude: tuple[str, ...]) -> dict:
    return {k: v for k, v in module.state_dict().items() if not k.startswith(exclude)}


def save_weights(
    module: nn.Module, directory: Path, dtype: torch.dtype | None = None, exclude: tuple[str, ...] = ()
) -> None:
    """Write the module's state dict (less keys starting with `exclude`) as safetensors, optionally cast."""
    state = {}
    for k, v in _own_state(module, exclude).items():
        v = v.detach().cpu()
        state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def load_weights(
    module: nn.Module, directory: str | Path, exclude: tuple[str, ...] = (), grow_rows: tuple[str, ...] = (),
    new_parts: tuple[str, ...] = (), verify: bool = True,
) -> None:
    """Load `model.safetensors` into `module` (all keys but `exclude`d ones), in the module's own dtype.

    Tensors named in `grow_rows` may hold fewer rows than the module's (a vocabulary grown at its end):
    the saved rows are loaded and the module keeps its own initial values for the rest. Parameters whose
    names start with one of `new_parts` may be absent (parts added since, e.g. a speech head on a model
    that only drew and read): they keep their initial values. With `verify`, the file is first checked
    against its recorded SHA-256."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint has no weights; save or copy it again")
    verify_file(path, verify)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); save or copy the checkpoint again") from None
    own = _own_state(module, exclude)
    missing = sorted(k for k in set(own) - set(state) if not (new_parts and k.startswith(new_parts)))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; use the config saved with these weights"
        )
    for k, v in state.items():
        if k in grow_rows and v.shape[1:] == own[k].shape[1:] and v.shape[0] <= own[k].shape[0]:
            v = torch.cat([v.to(own[k].dtype), own[k][v.shape[0]:]])  # [rows of module, ...]
        if v.shape != own[k].shape:
            raise CheckpointError(
                f"{path}: tensor {k} has shape {list(v.shape)} but the config expects {list(own[k].shape)}; "
                "use the config saved with these weights"
            )
        state[k] = v.to(own[k].dtype)
    module.load_state_dict(state, strict=not exclude and not new_parts)


TOKENIZER_FILE = "tokenizer.model"


def load_saved_tokenizer(directory: Path, vocab_size: int, verify: bool = True):
    """The `tokenizer.model` saved in a model folder (checked when `verify`); it must hold the config's
    `vocab_size` tokens, or the folder's parts do not belong together."""
    from latentlm.tokenizer import TextTokenizer

    path = Path(directory) / TOKENIZER_FILE
    verify_file(path, verify)
    tokenizer = TextTokenizer(path)
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"{path} has {tokenizer.vocab_size} tokens but {Path(directory) / CONFIG_FILE} "
                              f"expects {vocab_size}; use the tokenizer saved with this model")
    return tokenizer


def save_codec(codec: nn.Module, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a codec as its own checkpoint directory: `{kind, ...config}` + weights."""
    from latentlm.codecs import CODECS

    kind = next(k for k, (cls, _) in CODECS.items() if isinstance(codec, cls))
    with atomic_dir(directory) as tmp:
        write_config(tmp, {"kind": kind} | codec.config_dict())
        save_weights(codec, tmp, dtype)
        write_checksums(tmp)
    return Path(directory)


def is_codec_dir(directory: str | Path) -> bool:
    """Whether `directory` (a folder or shipped codec name) holds a codec rather than a model."""
    from latentlm.codecs import CODECS

    try:
        return read_config(resolve_codec(directory), verify=False).get("kind") in CODECS
    except CheckpointError:
        return False


def load_codec(directory: str | Path, verify: bool = True) -> nn.Module:
    """Build the codec that `directory/config.json` describes and load its weights (checked when `verify`).

    `directory` may also name a shipped codec (`shipped_codecs()`, e.g. "speech-vae")."""
    from latentlm.codecs import CODECS

    directory = resolve_codec(directory)
    config = read_config(directory, verify)
    kind = config.pop("kind", None)
    if kind not in CODECS:
        raise CheckpointError(
            f"{Path(directory) / CONFIG_FILE}: unknown codec kind {kind!r}; expected one of {sorted(CODECS)}"
        )
    cls, config_cls = CODECS[kind]
    try:
        codec = cls(config_cls(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: invalid codec config ({e})") from None
    load_weights(codec, directory, verify=verify)
    return codec.eval()


PRETRAINED_DIR = Path(__file__).parent / "pretrained"


# Codecs shipped on their own (each met its own bar), apart from the models that hold a copy of theirs.
SHIPPED_CODECS_DIR = PRETRAINED_DIR / "codecs"


def shipped_models() -> list[str]:
    return sorted(p.name for p in PRETRAINED_DIR.glob("*") if (p / CONFIG_FILE).is_file())


def shipped_codecs() -> list[str]:
    return sorted(p.name for p in SHIPPED_CODECS_DIR.glob("*") if (p / CONFIG_FILE).is_file())


def resolve_codec(name_or_path: str | os.PathLike) -> Path:
    """A shipped codec name (latentlm/pretrained/codecs/NAME), else a codec checkpoint folder."""
    name = str(name_or_path)
    if "/" not in name and (SHIPPED_CODECS_DIR / name / CONFIG_FILE).is_file():
        return SHIPPED_CODECS_DIR / name
    path = Path(name).expanduser()
    if not path.exists():
        raise CheckpointError(f"no codec {name!r}: not a folder, not a shipped codec "
                              f"({', '.join(shipped_codecs()) or 'none'}); give a codec checkpoint folder")
    return path


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name, then a local directory, then a Hugging Face hub id."""
    name = str(name_or_path)
    if not name.strip():
        raise CheckpointError(f"empty model name; use one of {shipped_models()} or a checkpoint directory")
    if (PRETRAINED_DIR / name / CONFIG_FILE).is_file():
        return PRETRAINED_DIR / name
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    path_like = name.startswith((".", "/", "~")) or name.count("/") > 1 or (
        "/" in name and Path(name.split("/")[0]).expanduser().is_dir())  # runs/x when runs/ exists: not a hub id
    if path_like and not local.exists():
        raise CheckpointError(f"no such folder: {name!r}; give a checkpoint folder, a shipped model "
                              f"({', '.join(shipped_models()) or 'none'}) or a hub id (owner/name)")
    if local.exists() or path_like or name.count("/") != 1:
        raise CheckpointError(
            f"unknown model {name!r}: not a shipped model ({', '.join(shipped_models()) or 'none'}), "
            "not a checkpoint directory, not a hub id (owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name))
    except Exception as e:  # noqa: BLE001 - any hub failure is reported the same way
        raise CheckpointError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}); it needs the network, "
            f"or use a shipped model ({', '.join(shipped_models()) or 'none'}) or a local directory"
        ) from None
