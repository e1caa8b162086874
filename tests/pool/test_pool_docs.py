"""What users see of Pool: help(Pool) documents Pool's own constructor and attributes."""

import inspect
import re

from fastpool import Pool


def _public_attributes() -> set[str]:
    # Properties and the attributes a live pool sets (dead_letters), not methods.
    names = {n for n, v in vars(Pool).items() if isinstance(v, property) and not n.startswith("_")}
    with Pool(1) as pool:
        names |= {n for n in vars(pool) if not n.startswith("_")}
    return names


def test_pool_docstring_documents_constructor_and_attributes():
    doc = Pool.__doc__
    assert doc is not None and "production worker pool" in doc
    words = set(re.findall(r"\w+", doc))
    params = [p for p in inspect.signature(Pool.__init__).parameters if p != "self"]
    assert params, "the constructor's signature is Pool's own"
    missing = [p for p in params if p not in words]
    assert not missing, f"constructor parameters not in Pool.__doc__: {missing}"
    attrs = _public_attributes()
    assert "dead_letters" in attrs
    missing = sorted(a for a in attrs if a not in words)
    assert not missing, f"public attributes not in Pool.__doc__: {missing}"


def test_help_shows_pools_constructor_not_the_stdlibs():
    init_doc = inspect.getdoc(Pool.__init__)
    assert init_doc is not None
    assert "max_workers" not in init_doc and "thread_name_prefix" not in init_doc
    for name, member in vars(Pool).items():
        if not name.startswith("_") and (callable(member) or isinstance(member, property)):
            assert inspect.getdoc(getattr(Pool, name)), f"Pool.{name} has no docstring"
