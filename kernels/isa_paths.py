"""Which ISA path a C++ kernel with several takes: the best one this CPU runs, unless a call's `isa=`
or the kernel's environment variable forces one (for tests and side-by-side benchmarks).

A kernel whose library holds several paths (scalar loops, AVX2, AVX-512...) exports `supports(code)`
and `best_isa()`, the codes being indices into its `names`; `IsaPaths` turns names into codes with
errors that say what this CPU offers.
"""
from __future__ import annotations

import os

from .cpp_build import CppExtension

BEST = -1  # the code that lets the kernel pick its best path


class IsaPaths:
    """The ISA paths of one extension: `names[code]`, forced by `isa=` or $`env` ("auto" = best)."""

    def __init__(self, extension: CppExtension, names: tuple[str, ...], env: str, what: str) -> None:
        self.extension, self.names, self.env, self.what = extension, names, env, what  # what: "ternary"

    def supported(self) -> list[str]:
        """The paths this CPU can run (empty when the extension is unavailable)."""
        ext = self.extension.get()
        return [] if ext is None else [name for code, name in enumerate(self.names) if ext.supports(code)]

    def code(self, isa: str | None = None) -> int:
        """BEST unless `isa` (else $env) names a path; an unknown or unsupported name raises ValueError."""
        isa = (os.environ.get(self.env, "") if isa is None else isa).strip().lower()
        if isa in ("", "auto", "best"):
            return BEST
        if isa not in self.names:
            raise ValueError(f"unknown {self.what} ISA path {isa!r}; choose from {self.names} or 'auto'")
        code = self.names.index(isa)
        ext = self.extension.get()
        if ext is not None and not ext.supports(code):
            raise ValueError(f"this CPU cannot run the {isa!r} {self.what} path; it supports {self.supported()}")
        return code

    def in_use(self, isa: str | None = None, **problem) -> str:
        """The path the kernel takes (honouring `isa` / $env), or "reference" without the extension;
        `problem`: what the kernel's `best_isa` weighs, for one whose best path depends on the shape."""
        ext = self.extension.get()
        if ext is None:
            return "reference"
        code = self.code(isa)
        return self.names[ext.best_isa(**problem) if code == BEST else code]
