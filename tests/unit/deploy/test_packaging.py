"""pyproject.toml lists its packages by hand: a subpackage missing from the list installs
fine in editable mode (the tests' mode) but is absent from a built wheel (the Dockerfile's
``pip install .``), so the image would fail at import time."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    found: set[str] = set()
    for top, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((top, *rel)))
    return found


def test_every_package_on_disk_is_listed_for_the_wheel() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = _packages_on_disk(setuptools["package-dir"])
    assert on_disk - listed == set(), "packages missing from [tool.setuptools].packages"
    assert listed - on_disk == set(), "listed packages that do not exist"


def test_every_client_package_is_listed_for_the_client_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
            "packages"
        ]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT / "clients").parts) for init in (ROOT / "clients").rglob("__init__.py")
    }
    assert on_disk == listed
