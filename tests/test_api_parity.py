"""Mechanical parity with the running stdlib (cytoolz's test_embedded_sigs idea).

A drop-in must accept exactly the stdlib's calls: same signatures, same defaults, same
docstrings for what it only re-implements.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
from concurrent.futures import _base

import pytest

import fastpool

TPE = fastpool.ThreadPoolExecutor
STD = cf.ThreadPoolExecutor
STDLIB_HAS_BUFFERSIZE = "buffersize" in inspect.signature(STD.map).parameters


def sig(obj) -> inspect.Signature:
    """The signature without annotations (fastpool is typed, the stdlib is not)."""
    s = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in s.parameters.values()]
    return s.replace(parameters=params, return_annotation=inspect.Signature.empty)


@pytest.mark.parametrize("name", ["__init__", "submit", "shutdown", "__enter__", "__exit__"])
def test_executor_signatures(name):
    assert sig(getattr(TPE, name)) == sig(getattr(STD, name))


def test_map_signature():
    ours = sig(TPE.map)
    theirs = sig(STD.map)
    if STDLIB_HAS_BUFFERSIZE:
        assert ours == theirs
        return
    # Before 3.14 fastpool adds buffersize=None (keyword-only, last), nothing else.
    params = dict(ours.parameters)
    extra = params.pop("buffersize")
    assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is None
    assert list(ours.parameters)[-1] == "buffersize"
    assert ours.replace(parameters=list(params.values())) == theirs


def test_every_public_stdlib_method_exists_with_the_same_signature():
    for name, member in inspect.getmembers(STD, callable):
        if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__"):
            continue
        if name == "map" or isinstance(member, type):
            continue
        ours = getattr(TPE, name)
        assert sig(ours) == sig(member), name


def test_is_a_subclass():
    assert issubclass(TPE, STD) and issubclass(TPE, cf.Executor)


@pytest.mark.parametrize("name", ["submit", "shutdown"])
def test_docstrings_reused(name):
    assert getattr(TPE, name).__doc__ == getattr(_base.Executor, name).__doc__


def test_docstrings_non_empty():
    for obj in (TPE, TPE.__init__, TPE.submit, TPE.map, TPE.shutdown, fastpool.Future):
        assert obj.__doc__ and obj.__doc__.strip(), obj
    assert "buffersize" in TPE.map.__doc__


FUTURE_METHODS = ["cancel", "cancelled", "running", "done", "add_done_callback", "result",
                  "exception", "set_running_or_notify_cancel", "set_result", "set_exception"]


def _future_classes():
    classes = [pytest.param(fastpool.Future, id="active")]
    import importlib

    classes.append(pytest.param(importlib.import_module("fastpool._core_py").Future,
                                id="python"))
    try:
        native = importlib.import_module("fastpool._core")
    except ImportError:
        pass
    else:
        classes.append(pytest.param(native.Future, id="native"))
    return classes


@pytest.mark.parametrize("cls", _future_classes())
def test_future_api(cls):
    assert issubclass(cls, cf.Future)
    for name in FUTURE_METHODS:
        ours = getattr(cls, name)
        ref = getattr(_base.Future, name)
        assert ours.__doc__ == ref.__doc__, name
        assert sig(ours) == sig(ref), name
    # The attributes wait()/as_completed() reach into.
    f = cls()
    for attr in ("_condition", "_state", "_waiters"):
        getattr(f, attr)
    assert f._state == _base.PENDING
    assert "pending" in repr(f)
    f.set_result(3)
    assert "finished returned int" in repr(f)


def test_module_reexports():
    assert fastpool.wait is cf.wait
    assert fastpool.as_completed is cf.as_completed
    assert fastpool.CancelledError is cf.CancelledError
    for const in ("ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"):
        assert getattr(fastpool, const) == getattr(cf, const)
    assert fastpool.BrokenThreadPool is cf.thread.BrokenThreadPool
