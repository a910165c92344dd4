"""Build the compiled hot path (issue 13, lever 3); everything else is in pyproject.toml.

The modules in :data:`COMPILED` are compiled with mypyc (Debian's
``python3-mypy``) from the same typed .py files the pure-Python build runs.
The .py files stay installed beside the extensions; ``LAMD_PURE=1`` makes
the daemon import them instead (``lamd/_pure.py``). ``LAMD_COMPILE=0`` at
build time builds no extensions at all (a pure-Python install).

In place, for the test suite (``packaging/setup.sh`` does this)::

    /usr/bin/python3 setup.py build_ext --inplace
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lamd._pure import COMPILED, SHARED_LIB  # noqa: E402  (the one list of compiled modules)


def ext_modules() -> list:
    if os.environ.get("LAMD_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    paths = [m.replace(".", "/") + ".py" for m in COMPILED]
    return mypycify(
        # the rest of lamd is read for its types, not compiled
        ["--follow-imports=silent", "--python-version=3.11", *paths],
        opt_level="3",
        # one shared library inside the package (not a top-level module)
        separate=[(paths, SHARED_LIB)],
    )


setup(ext_modules=ext_modules())
