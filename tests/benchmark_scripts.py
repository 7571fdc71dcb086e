"""Loads a script of ``benchmarks/`` (not a package) as a module, for tests of its parts."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name: str):
  """``benchmarks/<name>.py`` as a fresh module."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
