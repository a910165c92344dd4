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
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lamd._pure import COMPILED, DATALINK, DATALINK_LIB, HOTPATH, MANIFEST, SHARED_LIB, source_digest  # noqa: E402


def build_jobs(environ: dict[str, str] | None = None) -> int:
    """How many extensions to compile at once: ``LAMD_BUILD_JOBS`` (the
    Debian build sets it from ``DEB_BUILD_OPTIONS``'s ``parallel=N``), else
    one per CPU. The hot path's shared library is one C file (about a minute
    of ``cc1`` here); the sixteen modules' shims, a second each, build beside
    it: in place, 63 s instead of 73 on two CPUs."""
    env = os.environ if environ is None else environ
    try:
        return max(1, int(env["LAMD_BUILD_JOBS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)))


class BuildExt(build_ext):
    """Build the extensions (:func:`build_jobs` at once, unless ``-j``
    says), then record the digest of each compiled .py beside them
    (lamd/_pure.py compares it at import: a .py edited since the build runs
    as Python, never as the old extension)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = build_jobs()

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        top = HERE if self.inplace else self.build_lib
        lines = [f"{m} {source_digest(os.path.join(HERE, *m.split('.')) + '.py')}\n"
                 for m in COMPILED]
        with open(os.path.join(top, "lamd", MANIFEST), "w") as f:
            f.writelines(lines)


def ext_modules() -> list:
    if os.environ.get("LAMD_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    def paths(mods: tuple[str, ...]) -> list[str]:
        return [m.replace(".", "/") + ".py" for m in mods]

    exts = mypycify(
        # the rest of lamd is read for its types, not compiled
        ["--follow-imports=silent", "--python-version=3.11", *paths(COMPILED)],
        opt_level="3",
        # shared libraries inside the package (not top-level modules), two
        # so that the build compiles them at once
        separate=[(paths(HOTPATH), SHARED_LIB), (paths(DATALINK), DATALINK_LIB)],
    )
    for ext in exts:
        # each module's shim calls nothing of libc: say it needs it anyway, as
        # every shared object should (lintian: shared-library-lacks-prerequisites)
        ext.extra_link_args += ["-Wl,--no-as-needed", "-lc"]
    return exts


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt})
