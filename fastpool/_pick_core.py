"""Pick the core: the compiled fastpool._core, or its pure-Python twin.

Same three tests as yarl/propcache/multidict: the FASTPOOL_NO_EXTENSIONS environment
variable, a non-CPython interpreter, and an ImportError of the extension.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("FASTPOOL_NO_EXTENSIONS"))
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _py as core

    NATIVE = False
else:
    try:
        from . import _core as core  # type: ignore[no-redef]

        NATIVE = True
    except ImportError:  # pragma: no cover - depends on the build
        from . import _py as core  # type: ignore[no-redef]

        NATIVE = False

__all__ = ["NATIVE", "core"]
