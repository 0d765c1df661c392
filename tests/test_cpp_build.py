"""Building the C++ kernels: every kernel package's extension is known to `all_extensions`, a compile
says so on stderr, a failed one warns and leaves the reference, and `latentlm build-kernels` reports
each extension."""

import threading
import time
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


def _probe(tmp_path, name="probe_key_cpu"):
    """An extension over one source in tmp_path (never compiled here); unregistered by the caller."""
    src = tmp_path / "src" / "probe.cpp"
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("int probe() { return 1; }\n")
    return cpp_build.CppExtension(name, (src,), "the probe kernel")


def test_the_cache_key_follows_the_build_inputs_only(monkeypatch, tmp_path):
    try:
        first = _probe(tmp_path).digest
        assert _probe(tmp_path).digest == first  # nothing changed: the same folder
        flags = cpp_build.cflags()
        monkeypatch.setattr(cpp_build, "cflags", lambda: flags + ["-DPROBE"])
        assert _probe(tmp_path).digest != first  # a flag
        monkeypatch.setattr(cpp_build, "cflags", lambda: flags)
        assert _probe(tmp_path).digest == first
        (tmp_path / "src" / "probe.cpp").write_text("int probe() { return 2; }\n")
        assert _probe(tmp_path).digest != first  # a source's contents
        (tmp_path / "src" / "probe.cpp").write_text("int probe() { return 1; }\n")
        assert _probe(tmp_path).digest == first
        monkeypatch.setattr(cpp_build.sys, "prefix", "/elsewhere/venv")
        assert _probe(tmp_path).digest != first  # another venv
        other = tmp_path / "other-checkout"
        other.mkdir()
        assert _probe(other).digest != first  # the same source in another checkout
    finally:
        cpp_build._EXTENSIONS.pop("probe_key_cpu")


def _fake_compile(state: dict):
    """A stand-in for torch's compile: writes the library slowly and notes any overlapping build."""
    def compile_(ext, directory):
        with state["guard"]:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
        try:
            if ext.library_path().exists():
                return "loaded"
            with open(ext.library_path(), "w") as f:
                f.write("half")
                f.flush()
                time.sleep(0.3)
                f.write(" and the rest")
            state["compiles"] += 1
            return "built"
        finally:
            with state["guard"]:
                state["inside"] -= 1
    return compile_


def test_two_builds_at_once_compile_once_and_say_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "cache"))
    state = {"guard": threading.Lock(), "inside": 0, "most": 0, "compiles": 0}
    monkeypatch.setattr(cpp_build.CppExtension, "_compile", _fake_compile(state))
    try:
        extensions = [_probe(tmp_path, "probe_lock_cpu") for _ in range(2)]  # two processes' own objects
        results = []
        threads = [threading.Thread(target=lambda e=e: results.append(e.build())) for e in extensions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["built", "loaded"] and state["compiles"] == 1 and state["most"] == 1
        assert extensions[0].library_path().read_text() == "half and the rest"
        err = capsys.readouterr().err
        assert err.count("latentlm: compiling the probe kernel (once, ~") == 1
        assert (extensions[0].build_directory() / cpp_build.LOCK_FILE).exists()
    finally:
        cpp_build._EXTENSIONS.pop("probe_lock_cpu")
