"""Building the C++ kernels: every kernel package's extension is known to `all_extensions`, a compile
says so on stderr, a failed one warns and leaves the reference, and `latentlm build-kernels` reports
each extension."""

from pathlib import Path

import pytest

from latentlm.cli.main import main
from latentlm.kernels import cpp_build

KERNELS = Path(cpp_build.__file__).resolve().parent


def test_all_extensions_are_the_kernel_packages_with_csrc():
    folders = {p.parent.name for p in KERNELS.glob("*/csrc")}
    sources = {src.parent.parent.name for ext in cpp_build.all_extensions().values() for src in ext.sources}
    assert sources == folders  # each csrc folder is built by some extension, and no other folder is


def test_a_compile_says_so_and_a_failure_warns(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path))  # nothing built here yet
    ext = cpp_build.CppExtension("probe_cpu", (tmp_path / "missing.cpp",), "the probe kernel")
    try:
        with pytest.warns(RuntimeWarning, match="the probe kernel could not be built"):
            assert ext.get() is None
        assert "latentlm: compiling the probe kernel" in capsys.readouterr().err
        assert ext.get() is None  # tried once: no second compile, no second warning
    finally:
        cpp_build._EXTENSIONS.pop("probe_cpu")


def test_build_kernels_command_reports_every_extension(capsys):
    main(["build-kernels"])
    lines = capsys.readouterr().out.splitlines()
    names = set(cpp_build.all_extensions())
    assert {line.split(":")[0] for line in lines} == names
    for line in lines:  # built, or (where this machine cannot compile one) the reference in use
        assert ": ready (" in line or ": not built: its ops use the PyTorch reference" in line
