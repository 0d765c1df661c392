"""pyproject.toml ships every package of the source tree, and the C++ sources the kernels build from:
an editable install finds new folders by itself, a wheel only what is listed."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_packages():
    """Every package under the package-dir roots of pyproject (folders with an __init__.py), by import name."""
    names = set()
    for name, folder in config()["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" not in rel.parts:
                names.add(".".join([name, *rel.parts]) if rel.parts else name)
    return names


def test_every_package_is_listed():
    missing = source_packages() - set(config()["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_kernel_source_is_shipped():
    data = config()["package-data"]
    folders = [(csrc, f"latentlm.kernels.{csrc.parent.name}") for csrc in sorted((ROOT / "kernels").glob("*/csrc"))]
    for folder, package in folders + [(ROOT / "kernels" / "include", "latentlm.kernels")]:  # + shared headers
        patterns = [p.removeprefix(f"{folder.name}/") for p in data.get(package, [])]
        for source in folder.iterdir():
            assert any(source.match(p) for p in patterns), f"{source.name} of {package} is not in package-data"


def test_every_listed_package_exists():
    stale = set(config()["packages"]) - source_packages()
    assert not stale, f"pyproject.toml lists packages that are not in the tree: {sorted(stale)}"
