"""Building our C++ CPU kernels: compiled on first use with `torch.utils.cpp_extension.load` (ninja),
cached on disk, and replaced by the PyTorch reference (after one warning) when the build fails.

A `CppExtension` names its sources; its library lands in `<cache>/kernels/<name>-<digest>`, where
`<cache>` is `$LATENTLM_CACHE` or `~/.cache/latentlm` and the digest covers everything that goes into
the build (`CppExtension.build_inputs`): the sources' paths and contents (and the headers beside them, and
the shared ones of `include/`), the flags, the include paths, torch (version and install), the Python
executable and ABI, and the machine. Two checkouts or two venvs thus build in folders of their own instead
of rebuilding each other's library in one; a later process of the same set-up finds the library built and
only loads it. A build holds a file lock in its folder, so two processes that start one at once compile
it once. A compile prints one line on stderr (it takes about a minute per extension);
`build_all` compiles every extension at once, in parallel processes (`latentlm build-kernels`, run by
the Makefile's set-up), so that first use only loads them.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import pkgutil
import platform
import re
import sys
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX: builds are not locked across processes
    fcntl = None

LDFLAGS = ("-fopenmp",)
INCLUDE = Path(__file__).resolve().parent / "include"  # headers every extension shares (latentlm_cpu.h)
COMPILE_SECONDS = 60  # about how long one extension takes to compile, for the message
LOCK_FILE = ".build.lock"
_EXTENSIONS: dict[str, "CppExtension"] = {}  # every extension made, by name (`all_extensions`)


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x64")


def cflags() -> list[str]:
    # x86-64-v2 is only the baseline; AVX2 / AVX-512 code carries its own target attributes.
    return ["-O3", "-fopenmp"] + (["-march=x86-64-v2"] if _is_x86() else [])


def cache_root() -> Path:
    root = os.environ.get("LATENTLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "latentlm"


def build_key(inputs: dict) -> str:
    """A short hash of a build's inputs (a JSON-able dict): the name of its cache folder."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive `flock` on `path` (created if need be) for the block.

    Two processes (or threads) building one extension into one folder would otherwise run the compiler
    over each other's files; the second waits, then finds the library built and only loads it. The
    kernel drops the lock when its holder dies, so a killed build never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


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

    def _source_files(self) -> list[Path]:
        """The sources, the headers beside them and the shared headers: the files the compiler reads."""
        files = set(self.sources)
        for directory in {s.parent for s in self.sources} | {INCLUDE}:
            if directory.is_dir():
                files |= {p for p in directory.iterdir() if p.suffix in (".cpp", ".h", ".hpp")}
        return sorted(files)

    def build_inputs(self) -> dict:
        """Everything that goes into the build command and decides its result.

        Paths count, not only contents: torch's ninja file holds them, so a folder shared by two
        checkouts or two venvs would be rebuilt by each in turn."""
        files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
                 for p in self._source_files()}
        return {"files": files, "cflags": cflags(), "ldflags": list(LDFLAGS), "include_paths": [str(INCLUDE)],
                "torch": [torch.__version__, str(Path(torch.__file__).resolve().parent)],
                "python": [sys.prefix, os.path.realpath(sys.executable), sys.version,  # the venv, not python vs python3
                           sysconfig.get_config_var("SOABI") or ""],
                "machine": platform.machine(), "compiler": os.environ.get("CXX", "")}

    @functools.cached_property
    def digest(self) -> str:
        """Hash of `build_inputs`: the cache folder differs whenever the build would."""
        return build_key(self.build_inputs())

    def module_name(self) -> str:
        return f"latentlm_{self.name}_{self.digest}"

    def build_directory(self) -> Path:
        return cache_root() / "kernels" / f"{self.name}-{self.digest}"

    def library_path(self) -> Path:
        """Where the built library lies once `get()` has succeeded."""
        return self.build_directory() / f"{self.module_name()}.so"

    def build(self):
        """Compile (or, when up to date, just load) the extension under the folder's file lock, saying
        so on stderr when it compiles; raises on any failure."""
        directory = self.build_directory()
        with file_lock(directory / LOCK_FILE):
            (directory / "lock").unlink(missing_ok=True)  # torch's own baton: under our lock, left by a killed build
            if not self.library_path().exists():
                print(f"latentlm: compiling {self.what} (once, ~{COMPILE_SECONDS} s)...", file=sys.stderr, flush=True)
            return self._compile(directory)

    def _compile(self, directory: Path):
        """torch's `load` into `directory`: compiles when out of date, then imports the library."""
        # torch logs notes (CUDA_HOME on import, compiler checks) and warns; a failure gets our one line
        logger = logging.getLogger("torch.utils.cpp_extension")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.cpp_extension import load

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
