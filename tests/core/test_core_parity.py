"""The two cores are one interface, checked mechanically (as test_api_parity does against
the stdlib): fastpool._core (src/_core.pyx) and its pure-Python twin fastpool._py export
the same names; each class has the same public members (methods vs data alike) and each
method and function the same signature; fastpool/_core.pyi declares exactly that; and
the numbers (counters, task states, ...) are fastpool._states' in both.

Signatures of compiled functions come from inspect.signature (Cython's binding
functions carry one); a compiled class's constructor from the signature Cython embeds
in its docstring (embedsignature=True), or, for a class with only __cinit__, from a
call with the Python core's parameter names as keywords.
"""

from __future__ import annotations

import ast
import inspect
import re
from concurrent.futures import _base
from pathlib import Path

import pytest

import fastpool
import fastpool._py as py_core
from fastpool import _states
from conftest import _import_native_core

STUB = Path(fastpool.__file__).parent / "_core.pyi"
NUMBERS = [name for name in vars(_states) if name.isupper()]
# Private members that are part of the interface (called from outside the core).
PRIVATE_INTERFACE = {"_before_fork", "_after_fork_parent", "_after_fork_child"}
DUNDERS = ("__iter__", "__next__", "__len__")


@pytest.fixture(scope="module")
def native():
    mod = _import_native_core()
    if mod is None:
        pytest.skip("fastpool._core is not built (pure-Python install)")
    return mod


def sig(obj) -> inspect.Signature:
    """The signature without annotations (the compiled core has none)."""
    s = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in s.parameters.values()]
    return s.replace(parameters=params, return_annotation=inspect.Signature.empty)


def _noop(*args, **kwargs):
    return None


def instances(core):
    """One instance of each class of `core`, by name."""
    fut = core.Future()
    queue = core.WorkQueue()
    ledger = core.Ledger(queue)
    return {
        "Future": fut,
        "WorkQueue": queue,
        "WorkItem": core.WorkItem(fut, _noop, (), {}),
        "Ledger": ledger,
        "PoolTask": ledger.task(None, _noop, (), {}),
        "MapJob": core.MapJob(_noop, [], _noop, 1),
        "QueueClosed": core.QueueClosed(),
        "QueueEmpty": core.QueueEmpty(),
    }


def members(obj) -> set[str]:
    """The public members of an instance, without those of its stdlib base."""
    base = (_base.Future if isinstance(obj, _base.Future)
            else Exception if isinstance(obj, Exception) else object)
    names = {n for n in dir(obj) if not n.startswith("_") or n in PRIVATE_INTERFACE}
    names |= {n for n in DUNDERS if hasattr(obj, n)}
    return names - set(dir(base))


def kind(cls, name) -> str:
    return "method" if inspect.isroutine(getattr(cls, name, None)) else "data"


def public_names(mod) -> set[str]:
    """What a core module defines at its top level (imported modules and helpers aside)."""
    names = set()
    for name, value in vars(mod).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, int) or getattr(value, "__module__", None) in (
                mod.__name__, _states.__name__) or (
                getattr(value, "__module__", "").startswith(mod.__name__ + ".")):
            names.add(name)
    return names


# ------------------------------------------------------------------ names and numbers


def test_same_exports(native):
    assert sorted(native.__all__) == sorted(py_core.__all__)
    for core in (native, py_core):
        assert len(set(core.__all__)) == len(core.__all__), core
        for name in core.__all__:
            assert hasattr(core, name), (core.__name__, name)
        # Nothing public is left out of __all__.
        assert public_names(core) <= set(core.__all__), core.__name__


def test_numbers_are_the_one_definition(native):
    assert NUMBERS and set(NUMBERS) <= set(py_core.__all__)
    for name in NUMBERS:
        assert getattr(native, name) == getattr(py_core, name) == getattr(_states, name), name
    # Counters are 0..N_COUNTERS-1, task states and admit()'s answers distinct.
    counters = sorted(v for n, v in vars(_states).items()
                      if n.startswith("N_") and n != "N_COUNTERS")
    assert counters == list(range(_states.N_COUNTERS))
    for prefix in ("TASK_", "PUT_"):
        values = [v for n, v in vars(_states).items() if n.startswith(prefix)]
        assert len(set(values)) == len(values), prefix


def test_native_ledger_sized_by_the_numbers(native):
    # The native Ledger's arrays are sized from fastpool._states at import.
    ledger = native.Ledger(native.WorkQueue())
    assert len(ledger.counts()) == _states.N_COUNTERS
    waits, runs = ledger.latencies()
    assert len(waits) == len(runs) == _states.SAMPLE_WINDOW


# ----------------------------------------------------------- classes and signatures


@pytest.mark.parametrize("name", sorted(instances(py_core)))
def test_same_members(native, name):
    ours, theirs = instances(native)[name], instances(py_core)[name]
    assert members(ours) == members(theirs)
    for member in members(theirs):
        assert kind(type(ours), member) == kind(type(theirs), member), member


@pytest.mark.parametrize("name", sorted(instances(py_core)))
def test_same_method_signatures(native, name):
    ours, theirs = type(instances(native)[name]), type(instances(py_core)[name])
    for member in sorted(members(instances(py_core)[name])):
        if kind(theirs, member) != "method" or member in DUNDERS:
            continue
        assert sig(getattr(ours, member)) == sig(getattr(theirs, member)), member


def test_same_function_signatures(native):
    for name in native.__all__:
        value = getattr(native, name)
        if inspect.isroutine(value):
            assert sig(value) == sig(getattr(py_core, name)), name


def _embedded(cls) -> inspect.Signature | None:
    """The constructor signature Cython embedded in a class docstring, C types dropped
    ("WorkItem(future, fn, tuple args, dict kwargs)"); None if there is none."""
    first = (cls.__doc__ or "").split("\n", 1)[0]
    match = re.fullmatch(rf"{cls.__name__}\((.*)\)", first)
    if match is None:
        return None
    params, kind_ = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for part in filter(None, (p.strip() for p in match.group(1).split(","))):
        if part == "*":
            kind_ = inspect.Parameter.KEYWORD_ONLY
            continue
        spec, _, default = part.partition("=")
        name = spec.split()[-1]
        if name.startswith("**"):
            params.append(inspect.Parameter(name[2:], inspect.Parameter.VAR_KEYWORD))
            continue
        params.append(inspect.Parameter(
            name, kind_, default=ast.literal_eval(default) if default else
            inspect.Parameter.empty))
    return inspect.Signature(params)


@pytest.mark.parametrize("name", ["WorkItem", "PoolTask", "MapJob", "WorkQueue", "Ledger"])
def test_same_constructor(native, name):
    ours, theirs = getattr(native, name), getattr(py_core, name)
    expected = sig(theirs)
    embedded = _embedded(ours)
    if embedded is not None:
        assert embedded == expected
        return
    # Only __cinit__ (no embedded signature): the Python core's names work as keywords.
    queue = native.WorkQueue()
    samples = {"maxsize": 3, "queue": queue, "slow": True}
    assert set(expected.parameters) <= set(samples), expected
    ours(**{p: samples[p] for p in expected.parameters})


# ---------------------------------------------------------------------------- the stub


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def _stub_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            # Re-exports are spelled `import X as X` in a stub.
            names |= {a.asname for a in node.names if a.asname == a.name}
    return names


def _stub_classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _stub_members(classes: dict[str, ast.ClassDef], name: str) -> dict[str, ast.AST]:
    node = classes[name]
    found: dict[str, ast.AST] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            found.update(_stub_members(classes, base.id))
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            found[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            found[item.target.id] = item
    return found


def test_stub_declares_the_exports():
    assert _stub_names(_stub()) == set(py_core.__all__)


@pytest.mark.parametrize("name", sorted(instances(py_core)))
def test_stub_declares_the_members(name):
    stub = _stub_members(_stub_classes(_stub()), name)
    stub.pop("__init__", None)
    assert set(stub) == members(instances(py_core)[name])


def _stub_params(node: ast.FunctionDef) -> list[tuple[str, str, object]]:
    args = node.args
    out = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        out.append((arg.arg, "positional", _literal(default)))
    if args.vararg:
        out.append((args.vararg.arg, "*", None))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append((arg.arg, "keyword", _literal(default)))
    if args.kwarg:
        out.append((args.kwarg.arg, "**", None))
    return out


def _literal(node):
    if node is None:
        return None
    value = ast.literal_eval(node) if not isinstance(node, ast.UnaryOp) else \
        -ast.literal_eval(node.operand)
    return "..." if value is Ellipsis else value


def _runtime_params(func) -> list[tuple[str, str, object]]:
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional",
             inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**"}
    return [(p.name, kinds[p.kind], None if p.default is inspect.Parameter.empty
             else p.default) for p in inspect.signature(func).parameters.values()]


def _same_params(stub, runtime) -> bool:
    if len(stub) != len(runtime):
        return False
    for (sname, skind, sdefault), (rname, rkind, rdefault) in zip(stub, runtime):
        if (sname, skind) != (rname, rkind):
            return False
        if sdefault != "..." and sdefault != rdefault:
            return False
    return True


def test_stub_signatures():
    tree = _stub()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert _same_params(_stub_params(node), _runtime_params(getattr(py_core, node.name))), \
                node.name
    for name in instances(py_core):
        cls = getattr(py_core, name)
        for member, node in _stub_members(_stub_classes(tree), name).items():
            if not isinstance(node, ast.FunctionDef) or any(
                    isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                continue
            func = getattr(cls, member)
            if (name, member) == ("MapJob", "__init__"):
                # MapJob passes **options on to _MapState: the stub spells them out.
                func = py_core._MapState.__init__
            assert _same_params(_stub_params(node), _runtime_params(func)), f"{name}.{member}"
