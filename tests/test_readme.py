"""The README's module map names every module of the package (no daemon).

The map is the table under "The package is laid out as LAM lays out its
sources" (header ``| module | LAM source | what |``). A module counts as
named when a backticked path in one of its rows resolves to it: a path
starting with ``lamd/`` is taken as it is (and sets the row's current
directory: the file's directory, or the directory itself when it ends in
``/``); a bare ``name.py`` or ``sub/name.py`` resolves against the row's
current directory (``lamd/kernel/constants.py``, ``wire.py`` names
``lamd/kernel/wire.py``). ``__init__.py`` and ``__main__.py`` need no row of
their own when their package is named (a row names the directory or a
module in it).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP_HEADER = "| module | LAM source | what |"
BACKTICKED = re.compile(r"`([^`]+)`")
PY_PATH = re.compile(r"^[A-Za-z0-9_./]+\.py$")
EXEMPT = ("__init__.py", "__main__.py")


def module_map_rows(readme: str) -> list[str]:
    """The rows of the README's module map (header and rule left out)."""
    lines = readme.splitlines()
    start = lines.index(MAP_HEADER)  # ValueError: the map is gone
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def named_paths(rows: list[str]) -> set[str]:
    """Every ``lamd/...`` path (files, and directories ending in ``/``) the rows name."""
    named: set[str] = set()
    for row in rows:
        current = "lamd/"
        for token in BACKTICKED.findall(row):
            token = token.strip()
            if token.startswith("lamd/"):
                if token.endswith("/"):
                    current = token
                elif PY_PATH.match(token):
                    current = posixpath.dirname(token) + "/"
                else:
                    continue
                named.add(token)
            elif PY_PATH.match(token) and not token.startswith(("tests/", "bench/", "packaging/", "setup.py")):
                named.add(posixpath.normpath(current + token))
    return named


def unnamed_modules(readme: str, modules: list[str]) -> list[str]:
    """The modules (``lamd/...py`` paths) the README's module map does not name."""
    named = named_paths(module_map_rows(readme))
    named_dirs = {p if p.endswith("/") else posixpath.dirname(p) + "/" for p in named}
    named_dirs.add("lamd/")  # the map is the package's
    missing = []
    for mod in modules:
        if mod in named:
            continue
        if posixpath.basename(mod) in EXEMPT and posixpath.dirname(mod) + "/" in named_dirs:
            continue
        missing.append(mod)
    return missing


def package_modules() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lamd").rglob("*.py"))


def test_every_module_is_in_the_readme_module_map() -> None:
    modules = package_modules()
    assert len(modules) > 50  # the walk found the package
    readme = (ROOT / "README.md").read_text()
    assert unnamed_modules(readme, modules) == []


def test_a_removed_row_is_noticed() -> None:
    """The check fails when a row goes: each row, taken out, leaves a module unnamed."""
    readme = (ROOT / "README.md").read_text()
    modules = package_modules()
    before = set(unnamed_modules(readme, modules))
    for row in module_map_rows(readme):
        if row.startswith("| `setup.py`"):
            continue  # lamd/_pure.py is named there, and setup.py is no module
        without = readme.replace(row + "\n", "", 1)
        assert set(unnamed_modules(without, modules)) > before, row


def test_the_resolution_rules() -> None:
    rows = [
        "| `lamd/kernel/constants.py`, `wire.py` | `share/include/kreq.h` | x |",
        "| `lamd/jobs/` | `otb/sys/kenyad` | `process.py`: y; `iprocs/nreq.py` no |",
        "| `setup.py`, `lamd/_pure.py` | — | `iprocs/nreq.py` |",
    ]
    assert named_paths(rows) == {
        "lamd/kernel/constants.py", "lamd/kernel/wire.py",
        "lamd/jobs/", "lamd/jobs/process.py", "lamd/jobs/iprocs/nreq.py",
        "lamd/_pure.py", "lamd/iprocs/nreq.py",
    }
    readme = "intro\n\n" + MAP_HEADER + "\n|---|---|---|\n" + "\n".join(rows) + "\n\nafter\n"
    mods = ["lamd/__init__.py", "lamd/kernel/wire.py", "lamd/kernel/__init__.py",
            "lamd/jobs/__main__.py", "lamd/jobs/kenyad.py", "lamd/tools/__init__.py",
            "lamd/iprocs/nreq.py"]
    assert unnamed_modules(readme, mods) == ["lamd/jobs/kenyad.py", "lamd/tools/__init__.py"]
