"""Write measured tables into BENCHMARKS.md, one `<!-- section -->` block per benchmark, with the machine."""
from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    """The CPU (model name, family/model numbers, widest vector ISA), threads, torch, GPU, Python, date."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    ident = ", ".join(x for x in (f"family {info['cpu family']}, model {info['model']}" if "cpu family" in info
                                   and "model" in info else "", isa) if x)
    cpu += f" ({ident})" if ident else ""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
            f"{gpu}, Python {platform.python_version()}, measured {date.today().isoformat()}")


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the block between `<!-- name -->` and `<!-- /name -->`."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, BENCHMARKS)
