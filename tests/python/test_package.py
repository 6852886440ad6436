"""The package's metadata: one version, from pyproject.toml."""

import importlib.metadata
import pathlib
import tomllib

import uvpy
from uvpy import _uvpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_version_is_pyprojects_everywhere():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _uvpy.__version__ == declared  # compiled in by CMake
    assert uvpy.__version__ == declared
    assert importlib.metadata.version("uvpy") == declared
