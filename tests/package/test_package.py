"""What the package says about itself: its version, and the marker that tells type checkers it is typed."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import dramatiq_fairway

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_installed_distributions() -> None:
    assert dramatiq_fairway.__version__ == importlib.metadata.version("dramatiq-fairway")
    assert "__version__" in dramatiq_fairway.__all__


def test_version_matches_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert dramatiq_fairway.__version__ == pyproject["project"]["version"]


def test_the_package_is_marked_typed_and_the_wheel_ships_the_marker() -> None:
    assert (Path(dramatiq_fairway.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["*"]
