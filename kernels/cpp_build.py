"""Building our C++ CPU kernels: compiled on first use with `torch.utils.cpp_extension.load` (ninja),
cached on disk, and replaced by the PyTorch reference (after one warning) when the build fails.

A `CppExtension` names its sources; its library lands in `<cache>/kernels/<name>-<digest>`, where
`<cache>` is `$LATENTLM_CACHE` or `~/.cache/latentlm` and the digest covers the sources (and the
headers beside them, and the shared ones of `include/`), the flags, torch, Python and the machine: a
later process finds the library built and only loads it. A compile prints one line on stderr (it takes about a minute per extension);
`build_all` compiles every extension at once, in parallel processes (`latentlm build-kernels`, run by
the Makefile's set-up), so that first use only loads them.
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib
import logging
import multiprocessing
import os
import pkgutil
import platform
import re
import sys
import threading
import warnings
from pathlib import Path

import torch

LDFLAGS = ("-fopenmp",)
INCLUDE = Path(__file__).resolve().parent / "include"  # headers every extension shares (latentlm_cpu.h)
_EXTENSIONS: dict[str, "CppExtension"] = {}  # every extension made, by name (`all_extensions`)


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x64")


def cflags() -> list[str]:
    # x86-64-v2 is only the baseline; AVX2 / AVX-512 code carries its own target attributes.
    return ["-O3", "-fopenmp"] + (["-march=x86-64-v2"] if _is_x86() else [])


def cache_root() -> Path:
    root = os.environ.get("LATENTLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "latentlm"


def failure_reason(e: Exception) -> str:
    """One line saying why a build failed: the compiler's first error if there is one."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error:|not found|no such file|permission denied", line, re.I)]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:200]}"


class CppExtension:
    """One C++ extension: `get()` builds (or loads) it on first call, None when it cannot be built."""

    def __init__(self, name: str, sources: tuple[Path, ...], what: str) -> None:
        self.name, self.sources, self.what = name, sources, what  # what: "the C++ ternary CPU kernel"
        self._lock = threading.Lock()
        self._ext = None
        self._tried = False
        _EXTENSIONS[name] = self

    @functools.cached_property
    def digest(self) -> str:
        """Hash of what the library depends on: sources and headers, flags, torch, Python, machine."""
        h = hashlib.sha256()
        for directory in sorted({s.parent for s in self.sources} | {INCLUDE}):
            for path in sorted(directory.iterdir()):
                if path.suffix in (".cpp", ".h", ".hpp"):
                    h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(repr((cflags(), LDFLAGS, torch.__version__, sys.version_info[:2], platform.machine())).encode())
        return h.hexdigest()[:16]

    def module_name(self) -> str:
        return f"latentlm_{self.name}_{self.digest}"

    def build_directory(self) -> Path:
        return cache_root() / "kernels" / f"{self.name}-{self.digest}"

    def library_path(self) -> Path:
        """Where the built library lies once `get()` has succeeded."""
        return self.build_directory() / f"{self.module_name()}.so"

    def build(self):
        """Compile (or, when up to date, just load) the extension; raises on any failure."""
        if not self.library_path().exists():
            print(f"latentlm: compiling {self.what} (once per machine and version, about a minute)...",
                  file=sys.stderr, flush=True)
        # torch logs notes (CUDA_HOME on import, compiler checks) and warns; a failure gets our one line
        logger = logging.getLogger("torch.utils.cpp_extension")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.cpp_extension import load

                directory = self.build_directory()
                directory.mkdir(parents=True, exist_ok=True)
                return load(name=self.module_name(), sources=[str(s) for s in self.sources], extra_cflags=cflags(),
                            extra_ldflags=list(LDFLAGS), extra_include_paths=[str(INCLUDE)],
                            build_directory=str(directory), verbose=False)
        finally:
            logger.setLevel(level)

    def runs_on(self, device: torch.device | str) -> bool:
        """Whether the extension runs on `device`: a CPU, and it builds (built on first call)."""
        return torch.device(device).type == "cpu" and self.get() is not None

    def get(self):
        """The compiled module, built on first call; None (after one warning) when it cannot be built."""
        if not self._tried:
            with self._lock:
                if not self._tried:
                    try:
                        self._ext = self.build()
                    except Exception as e:  # noqa: BLE001 - any failure means: use the reference
                        self._ext = None
                        warnings.warn(f"latentlm: {self.what} could not be built ({failure_reason(e)}) in "
                                      f"{self.build_directory()}; using the PyTorch reference instead",
                                      RuntimeWarning, stacklevel=3)
                    self._tried = True
        return self._ext


def all_extensions() -> dict[str, CppExtension]:
    """Every C++ extension of `latentlm.kernels`, by name (importing each kernel package makes its own)."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.ispkg:
            importlib.import_module(f"{package}.{module.name}")
    return dict(_EXTENSIONS)


def _build_one(name: str) -> bool:
    """In a worker process: compile extension `name` into the cache; whether it built."""
    return all_extensions()[name].get() is not None


def build_all(workers: int | None = None) -> dict[str, bool]:
    """Compile every extension now, `workers` (default: the CPU count) in parallel processes, and load
    them here: what first use would do one after the other. {name: whether it built}; one that does
    not build warns once, and its ops use their PyTorch reference."""
    extensions = all_extensions()
    todo = [name for name, ext in extensions.items() if not ext.library_path().exists()]
    if len(todo) > 1:  # separate processes: compiling and importing touch process-wide state
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=context) as pool:
            list(pool.map(_build_one, todo))  # failures warn in the worker; get() below warns here
    return {name: ext.get() is not None for name, ext in extensions.items()}
