"""A failed restore's abandoned reads are dropped from the unraisable hook; nothing else is."""

import asyncio
import sys
import types

import pytest

from optbench_jax.train import checkpoint


def _unraisable(obj, error):
  return types.SimpleNamespace(object=obj, exc_value=error, exc_type=type(error),
                               exc_traceback=error.__traceback__, err_msg=None)


def _coroutine_of(filename: str):
  namespace = {}
  exec(compile("async def read():\n  pass\n", filename, "exec"), namespace)  # pylint: disable=exec-used
  return namespace["read"]()


def _late_completion() -> RuntimeError:
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    return e
  raise AssertionError("a closed loop accepted a callback")


@pytest.fixture
def seen(monkeypatch):
  passed_on = []
  monkeypatch.setattr(sys, "unraisablehook", passed_on.append)
  checkpoint._drop_abandoned_reads()  # pylint: disable=protected-access
  checkpoint._drop_abandoned_reads()  # pylint: disable=protected-access  # installed once
  return passed_on


def test_orbax_reads_and_late_completions_are_dropped(seen):
  orbax_read = _coroutine_of("/site-packages/orbax/checkpoint/serialization.py")
  try:
    sys.unraisablehook(_unraisable(orbax_read, ValueError("array index (0, 32)")))
    sys.unraisablehook(_unraisable(None, _late_completion()))
  finally:
    orbax_read.close()
  assert seen == []


def test_every_other_unraisable_exception_is_passed_on(seen):
  ours = _coroutine_of("/work/optbench_jax/train/loop.py")
  try:
    others = [_unraisable(ours, ValueError("ours")),
              _unraisable(None, RuntimeError("Event loop is closed")),   # not from asyncio
              _unraisable(object(), RuntimeError("Event loop is closed")),
              _unraisable(None, OSError("disk"))]
    for unraisable in others:
      sys.unraisablehook(unraisable)
  finally:
    ours.close()
  assert seen == others
