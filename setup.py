"""Build of the native core fastpool._core (metadata lives in pyproject.toml).

Environment switches:
  FASTPOOL_NO_EXTENSIONS=1      pure-Python build (the fallback core is used)
  FASTPOOL_DEBUG=1              -O0 -g, assertions on, Cython line tracing
  FASTPOOL_SANITIZE=thread|address   build with ThreadSanitizer / ASan+UBSan
Cythonizing happens lazily in build_ext (as uvloop and asyncpg do), so an sdist carries
the .pyx sources rather than only generated C++.
"""
import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CYTHON_REQUIREMENT = "3.1"


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


class BuildExt(build_ext):
    def finalize_options(self):
        # Cythonize before setuptools finalizes: it annotates the Extension objects,
        # and cythonize() returns new ones.
        if getattr(self, "_cythonized", False):
            return super().finalize_options()
        import Cython
        from Cython.Build import cythonize

        if tuple(int(x) for x in Cython.__version__.split(".")[:2]) < (3, 1):
            raise RuntimeError(
                f"fastpool requires Cython>={CYTHON_REQUIREMENT}, got Cython=={Cython.__version__}"
            )
        directives = {}
        if _flag("FASTPOOL_DEBUG"):
            directives.update(linetrace=True, boundscheck=True)
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            include_path=["src"],
            compiler_directives=directives,
            annotate=_flag("FASTPOOL_ANNOTATE"),
        )
        self._cythonized = True
        super().finalize_options()


def extensions():
    if _flag("FASTPOOL_NO_EXTENSIONS"):
        print("*** fastpool: pure-Python build (FASTPOOL_NO_EXTENSIONS) ***")
        return []
    compile_args, link_args, macros = [], [], []
    debug = _flag("FASTPOOL_DEBUG")
    sanitize = os.environ.get("FASTPOOL_SANITIZE", "")
    if sanitize not in ("", "thread", "address"):
        raise SystemExit(f"FASTPOOL_SANITIZE must be 'thread' or 'address', got {sanitize!r}")
    if debug:
        macros += [("FASTPOOL_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    if sys.platform == "win32":
        compile_args += ["/std:c++17"]
        compile_args += ["/Od", "/Zi", "/UNDEBUG"] if debug else ["/O2"]
        if sanitize == "thread":
            raise SystemExit("FASTPOOL_SANITIZE=thread: MSVC has no ThreadSanitizer")
        if sanitize:
            compile_args += ["/fsanitize=address", "/Zi"]
    else:
        compile_args += ["-std=c++17", "-Wall", "-Wno-unused-function"]
        if debug:
            compile_args += ["-O0", "-g", "-UNDEBUG"]
        elif not sanitize:
            # -g0 last: the interpreter's own CFLAGS (pyenv, some distros) carry -g, which
            # would put ~1 MB of debug info into every wheel.
            compile_args += ["-O2", "-g0"]
        else:
            compile_args += ["-O2"]
        if sanitize:
            kinds = {"thread": "thread", "address": "address,undefined"}[sanitize]
            compile_args += [f"-fsanitize={kinds}", "-fno-omit-frame-pointer", "-g"]
            link_args += [f"-fsanitize={kinds}"]
    return [
        Extension(
            "fastpool._core",
            ["src/_core.pyx"],
            include_dirs=["src"],
            depends=["src/fp_queue.h", "src/fp_queue.pxd", *sorted(glob.glob("src/core/*.pxi"))],
            language="c++",
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=macros,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
