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

    classes.append(pytest.param(importlib.import_module("fastpool._py").Future,
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


# --------------------------------------------------------------- 3.14's context hook
# 3.14's ThreadPoolExecutor takes **ctxkwargs for the class's prepare_context, whose
# worker contexts initialize each worker, run each task and finalize at worker exit:
# InterpreterPoolExecutor is built on it.
HAS_PREPARE_CONTEXT = hasattr(STD, "prepare_context")
needs_314 = pytest.mark.skipif(not HAS_PREPARE_CONTEXT, reason="Python 3.14+: prepare_context")


@needs_314
@pytest.mark.parametrize("cls", [STD, TPE], ids=["stdlib", "fastpool"])
def test_prepare_context_hook(cls):
    import threading

    log = []

    class Context(cf.thread.WorkerContext):
        @classmethod
        def prepare(cls, initializer, initargs, *, tag):
            def create():
                return cls(initializer, initargs, tag)

            def resolve(fn, args, kwargs):
                return (fn, (tag, *args), kwargs)
            return create, resolve

        def __init__(self, initializer, initargs, tag):
            super().__init__(initializer, initargs)
            self.tag = tag

        def initialize(self):
            log.append(("init", threading.get_ident()))
            super().initialize()

        def run(self, task):
            fn, args, kwargs = task
            return (self.tag, fn(*args, **kwargs))

        def finalize(self):
            log.append(("fini", threading.get_ident()))

    class Tagged(cls):
        @classmethod
        def prepare_context(cls, initializer, initargs, **ctxkwargs):
            return Context.prepare(initializer, initargs, **ctxkwargs)

    with Tagged(2, tag="t") as ex:
        assert ex.submit(str.upper).result() == ("t", "T")
        assert list(ex.map(str.__add__, ["x", "y"])) == [("t", "tx"), ("t", "ty")]
    inits = [tid for what, tid in log if what == "init"]
    assert inits and sorted(inits) == sorted(tid for what, tid in log if what == "fini")
    with pytest.raises(TypeError):
        cls(1, bogus=1)  # the default prepare_context takes no extra arguments
    with pytest.raises(TypeError, match="initializer must be a callable"):
        cls(1, initializer=3)


@needs_314
def test_interpreter_pool_executor_on_fastpool_base(monkeypatch):
    """With fastpool's executor in the stdlib's place before concurrent.futures.interpreter
    is imported (as the stdlib-tests harness does), InterpreterPoolExecutor subclasses
    it: each task must run in its worker's own interpreter, initializer failures must
    break the pool with the class's BROKEN."""
    import importlib
    import sys

    from concurrent import interpreters

    monkeypatch.setattr(cf.thread, "ThreadPoolExecutor", TPE)
    # Imported for real (not a detached copy): its do_call is pickled by name.
    monkeypatch.delitem(sys.modules, "concurrent.futures.interpreter", raising=False)
    interpreter = importlib.import_module("concurrent.futures.interpreter")
    monkeypatch.undo()
    assert issubclass(interpreter.InterpreterPoolExecutor, TPE)
    with interpreter.InterpreterPoolExecutor(2) as ex:
        assert ex.submit(pow, 2, 5).result() == 32
        assert list(ex.map(pow, [2, 3], [2, 2])) == [4, 9]
        assert ex.submit(interpreters.get_current).result().id != interpreters.get_current().id
        with pytest.raises(ValueError):
            ex.submit(int, "x").result()
    ex = interpreter.InterpreterPoolExecutor(1, initializer=int, initargs=("x",))
    with pytest.raises(interpreter.BrokenInterpreterPool):
        ex.submit(pow, 2, 2).result()
    ex.shutdown()
