"""``lamd._dataclasses``: the records of the kernel's process made without
importing :mod:`dataclasses` (issue 13, start-up), checked against the
standard module class by class: the same class body decorated both ways
must construct, compare, hash, print, freeze and copy alike."""

from __future__ import annotations

import dataclasses
from typing import ClassVar  # at module level: where dataclasses looks a string annotation up

import pytest

from lamd import _dataclasses as light

from .test_startup import loaded_after

#: every option combination the package's records use
OPTIONS = [{}, {"eq": False}, {"frozen": True}, {"frozen": True, "slots": True},
           {"slots": True}, {"slots": True, "eq": False}, {"init": False},
           {"init": False, "eq": False}, {"init": False, "unsafe_hash": True}]


def make(dc, field, **options):
    """The same record decorated by *dc* (with its *field*)."""

    @dc(**options)
    class Rec:
        """A record."""

        a: int
        b: str = "x"
        c: list[int] = field(default_factory=list)
        d: bytes = field(default=b"", repr=False)

        if options.get("init", True) is False:
            def __init__(self, a: int, b: str = "x", c: list[int] | None = None,
                         d: bytes = b"") -> None:
                set_ = object.__setattr__
                set_(self, "a", a)
                set_(self, "b", b)
                set_(self, "c", [] if c is None else c)
                set_(self, "d", d)

    return Rec


def pair(**options):
    return (make(dataclasses.dataclass, dataclasses.field, **options),
            make(light.dataclass, light.field, **options))


def outcome(fn):
    """What *fn* gives or raises (the exception's type and message)."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return (type(e).__mro__[1].__name__ if type(e).__name__ == "FrozenInstanceError"
                else type(e).__name__, str(e))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_a_record_behaves_as_the_standard_one(options) -> None:
    std, ours = pair(**options)
    for cls in (std, ours):
        x, y, z = cls(1), cls(1, "x", []), cls(2, "y", [3], b"d")
        cls.made = (x, y, z)
    sx, sy, sz = std.made
    ox, oy, oz = ours.made
    assert repr(ox).replace("make.<locals>.", "") == repr(sx).replace("make.<locals>.", "")
    assert repr(oz).endswith("Rec(a=2, b='y', c=[3])")           # d: repr=False
    assert (ox == oy, ox == oz, ox != oy) == (sx == sy, sx == sz, sx != sy)
    assert (ox == sx) is False                                    # another class
    assert outcome(lambda: hash(ox) == hash(oy)) == outcome(lambda: hash(sx) == hash(sy))
    assert (std.__hash__ is None) == (ours.__hash__ is None)
    assert outcome(lambda: setattr(ox, "a", 5)) == outcome(lambda: setattr(sx, "a", 5))
    assert outcome(lambda: delattr(oy, "b")) == outcome(lambda: delattr(sy, "b"))
    assert hasattr(ox, "__dict__") == hasattr(sx, "__dict__")    # slots
    assert ours.__match_args__ == std.__match_args__
    assert ox.c is not oy.c                                       # a factory per instance
    r = light.replace(oz, b="q")
    assert (r.a, r.b, r.c, r.d) == (2, "q", [3], b"d") and type(r) is type(oz)
    # the standard functions read these records too (the tests use them)
    assert dataclasses.is_dataclass(ours) and dataclasses.is_dataclass(oz)
    assert [f.name for f in dataclasses.fields(ours)] == ["a", "b", "c", "d"]
    assert dataclasses.replace(oz, a=7).a == 7
    assert dataclasses.asdict(oz) == dataclasses.asdict(sz)


def test_post_init_classvar_and_inherited_fields() -> None:
    for dc, field in ((dataclasses.dataclass, dataclasses.field), (light.dataclass, light.field)):
        @dc(frozen=True)
        class Base:
            """A base record."""

            KIND: ClassVar[str] = "base"
            a: int

            def __post_init__(self) -> None:
                if self.a < 0:
                    raise ValueError(f"a={self.a}")

        @dc(frozen=True)
        class Sub(Base):
            """A record on a record."""

            b: tuple[int, ...] = field(default_factory=tuple)

        s = Sub(1)
        assert (s.a, s.b, Sub.KIND, Sub.__match_args__) == (1, (), "base", ("a", "b"))
        assert repr(s).endswith("Sub(a=1, b=())")
        with pytest.raises(ValueError, match="a=-1"):
            Sub(-1)
        assert hash(Sub(1)) == hash(Sub(1, ())) and Sub(1) == Sub(1, ()) != Sub(1, (2,))


def test_a_record_that_holds_itself_prints_as_the_standard_one() -> None:
    out = []
    for dc in (dataclasses.dataclass, light.dataclass):
        @dc
        class Node:
            """A record that can hold itself."""

            name: str
            next: object = None

        n = Node("a")
        n.next = n
        out.append(repr(n).replace("test_a_record_that_holds_itself_prints_as_the_standard_one.<locals>.", ""))
    assert out[0] == out[1] == "Node(name='a', next=...)"


def test_a_default_before_a_field_without_one_is_refused_as_the_standard_does() -> None:
    for dc in (dataclasses.dataclass, light.dataclass):
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            @dc
            class Bad:
                a: int = 0
                b: int


@pytest.mark.parametrize("pure", ["", "1"], ids=["compiled", "pure"])
def test_the_kernel_process_imports_no_dataclasses(pure: str) -> None:
    """The daemon's modules and the internal processes it boots load neither
    :mod:`dataclasses` nor the :mod:`inspect` it imports (a socket
    activation's first client waits for every import before its reply; the
    internal processes boot after it, and load ``typing`` and ``logging``)."""
    code = ("import lamd.daemon\n"
            "from lamd import iprocs\n"
            "from lamd.iprocs.carried import with_carry\n"
            "table = iprocs.with_stubs(iprocs.boot_table({'node_addr': '127.0.0.1'}), iprocs.JOB_SERVICES)\n"
            "for row in with_carry(table):  # each internal process's module, as booted\n"
            "    if isinstance(row.main, iprocs._Lazy):\n"
            "        row.main.resolve()")
    assert loaded_after(code, ["dataclasses", "inspect", "ast", "dis"], {"LAMD_PURE": pure}) == []
