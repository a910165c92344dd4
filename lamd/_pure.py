"""The compiled hot path and its pure-Python fallback (issue 13).

The modules in :data:`COMPILED` are compiled with mypyc by ``setup.py`` (the
Debian package and ``pip install .`` build them; ``packaging/setup.sh``
builds them in place for the tests) into two shared libraries,
:data:`SHARED_LIB` (:data:`HOTPATH`) and :data:`DATALINK_LIB`
(:data:`DATALINK`), and one small extension per module beside its .py file.
Python imports an extension before a .py of the same name; :func:`install`
(run by ``lamd/__init__.py``) turns that around, so the .py files are
imported instead, when

* ``LAMD_PURE=1`` is set (the pure-Python build, on purpose), or
* a compiled module's .py is not the one it was compiled from (a checkout
  edited after its last build: the extension would run the old code; the
  build records each source's digest in :data:`MANIFEST`), in which case it
  also warns.

Either way all the modules of the list go pure together: the compiled ones
call each other natively and cannot be mixed with interpreted copies.
"""

from __future__ import annotations

import os
import sys

# Imported by every start of every lamd process, before anything else:
# typing (about 4 ms), importlib (0.4 ms with warnings), zlib and the digest
# of every compiled module's source are left to where they are needed
# (annotations are not evaluated). A lamd started by hboot calls lamboot back
# before it imports any compiled module, so none of that is on lamboot's
# path (issue 11).

#: the codec, the kernel's dispatch and rendezvous, the I/O dispatch, the crash state,
#: bufferd and the nreq calls it makes
HOTPATH = (
    "lamd.kernel.wire",
    "lamd.kernel.kactions",
    "lamd.kernel.kbase",
    "lamd.kernel.kinner",
    "lamd.kernel.kouter",
    "lamd.kernel.kidriver",
    "lamd.kernelio.loop",
    "lamd.kernelio.transfer",
    "lamd.kernelio.crashstate",
    "lamd.kernelio.fdstore",
    "lamd.kernelio.kiobase",
    "lamd.kernelio.kio",
    "lamd.kernelio.admission",
    "lamd.kernelio.kernelio",
    # every routed message (nsend/nrecv, rpi lamd) goes through bufferd's take
    "lamd.iprocs.nreq",
    "lamd.iprocs.bufferd",
)
#: the datalink's modules: every frame to or from another node (issue 11);
#: a library of their own, which the build compiles beside the hot path's
DATALINK = (
    "lamd.datalink.frame",
    "lamd.datalink.link",
    "lamd.datalink.linkreq",
    "lamd.iprocs.dli",
    "lamd.iprocs.dlo",
    "lamd.iprocs.echod",
    "lamd.iprocs.bforward",
    "lamd.iprocs.router",
)
COMPILED = HOTPATH + DATALINK
_COMPILED = frozenset(COMPILED)
#: mypyc's runtime and the hot path's compiled code, one library inside the package
SHARED_LIB = "lamd._hotpath"
#: the datalink's compiled code
DATALINK_LIB = "lamd._dlpath"
#: written by the build beside the library: "module digest" per compiled module
MANIFEST = "_hotpath.sources"

_HERE = os.path.dirname(os.path.abspath(__file__))


def _shared_lib_file() -> str | None:
    import importlib.machinery

    prefix = SHARED_LIB.rsplit(".", 1)[1] + "__mypyc"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, prefix + suffix)
        if os.path.exists(path):
            return path
    return None


def _source_file(name: str) -> str:
    return os.path.join(os.path.dirname(_HERE), *name.split(".")) + ".py"


def source_digest(path: str) -> str:
    """What the build records of a source file (cheap enough for every start)."""
    import zlib

    with open(path, "rb") as f:
        data = f.read()
    return f"{len(data)}-{zlib.crc32(data):08x}"


def stale() -> list[str]:
    """The compiled modules whose .py is not the one the build compiled
    (all of them when the build recorded nothing)."""
    if _shared_lib_file() is None:
        return []
    built: dict[str, str] = {}
    try:
        with open(os.path.join(_HERE, MANIFEST)) as f:
            for line in f:
                name, _, digest = line.strip().partition(" ")
                built[name] = digest
    except OSError:
        pass
    return [m for m in COMPILED
            if os.path.exists(_source_file(m)) and built.get(m) != source_digest(_source_file(m))]


class _SourceFirst:
    """A meta path finder that gives the .py file of a compiled module when
    the pure-Python build is wanted: told so (*pure* True), or, with *pure*
    None, decided when the first compiled module is imported (:func:`stale`
    reads every compiled module's source: not before it is needed)."""

    def __init__(self, pure: bool | None) -> None:
        self.pure = pure

    def find_spec(self, name: str, path: "list[str] | None" = None,
                  target: object = None) -> "importlib.machinery.ModuleSpec | None":
        if name not in _COMPILED:
            return None
        if self.pure is None:
            self.pure = _decide()
        if not self.pure:
            return None
        src = _source_file(name)
        if not os.path.exists(src):
            return None
        import importlib.util

        return importlib.util.spec_from_file_location(name, src)


def _decide() -> bool:
    """Pure Python if the build is stale (with a warning), else compiled."""
    old = stale()
    if old:
        import warnings

        warnings.warn(f"lamd: {', '.join(old)} changed since the compiled build "
                      f"({_shared_lib_file()}): running pure Python; rebuild with "
                      "'python3 setup.py build_ext --inplace'", RuntimeWarning, stacklevel=2)
    return bool(old)


def install() -> None:
    """Import the .py files of :data:`COMPILED` instead of their extensions
    when ``LAMD_PURE=1`` is set or the build is stale (see above; the
    staleness is checked when the first of them is imported)."""
    if any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        return
    forced = os.environ.get("LAMD_PURE", "") not in ("", "0")
    sys.meta_path.insert(0, _SourceFirst(True if forced else None))


def compiled() -> bool:
    """Whether the running hot path is the compiled one."""
    import lamd.kernel.kouter as kouter

    return not (kouter.__file__ or "").endswith(".py")
