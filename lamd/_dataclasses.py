"""``dataclass``, ``field`` and ``replace`` for the kernel's process, without
importing :mod:`dataclasses` (issue 13, start-up).

:mod:`dataclasses` imports :mod:`inspect`, and with it ``ast``, ``dis``,
``tokenize``, ``re`` and ``copy``: 8 ms and 2 MiB of an interpreter that
needs none of them, and it builds every class from source it formats and
compiles, a few more milliseconds for the kernel's forty-odd records. The
first client of a socket-activated daemon waits for all of it.

mypy and mypyc see the standard names (the ``TYPE_CHECKING`` branch): the
records are checked, and compiled, as dataclasses. mypyc hands a compiled
dataclass to whatever the decorator is at run time, and that is this
module's, which makes what the standard one makes for the options the
kernel's records use:

* ``__init__`` (``init=True``, unless the class spells its own out), with
  defaults, ``field(default=..., default_factory=...)`` and
  ``__post_init__``; a frozen record's sets through ``object.__setattr__``;
* ``__repr__`` (``repr=True``; ``field(repr=False)`` leaves a field out);
* ``__eq__`` (``eq=True``: same class, equal fields), and ``__hash__`` by
  the standard rules: from the fields when ``frozen`` or ``unsafe_hash``,
  ``None`` for an ``eq`` record that is neither;
* ``frozen=True``: assigning or deleting a field raises
  :class:`FrozenInstanceError` (an ``AttributeError``);
* ``slots=True``: the class is made again with ``__slots__``;
* ``__match_args__``, and ``replace``.

Fields are the class's own annotations (``ClassVar`` ones excluded) after
those of its record bases. ``__dataclass_fields__`` is made, with
:mod:`dataclasses`, the first time something asks for it
(``dataclasses.fields``, ``is_dataclass``, ``replace``: the tests do), so
the standard functions work on these records too.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, dataclass, field, replace
else:
    from operator import attrgetter
    from reprlib import recursive_repr  # imported by collections already

    #: no default (``dataclasses.MISSING``)
    MISSING = type("_Missing", (), {"__repr__": lambda self: "MISSING"})()
    #: the ``__init__`` argument of a field with a default factory left out
    _FACTORY = type("_Factory", (), {"__repr__": lambda self: "<factory>"})()
    #: where a record's fields are kept (``__dataclass_fields__`` is built from it)
    _FIELDS = "__lamd_fields__"

    class FrozenInstanceError(AttributeError):
        """A field of a frozen record was assigned or deleted."""

    class Field:
        """One field: what ``field()`` gives, named once the class is made."""

        __slots__ = ("name", "type", "default", "default_factory", "repr")

        def __init__(self, default, default_factory, repr) -> None:
            if default is not MISSING and default_factory is not MISSING:
                raise ValueError("cannot specify both default and default_factory")
            self.name = ""
            self.type = None
            self.default = default
            self.default_factory = default_factory
            self.repr = repr

    def field(*, default=MISSING, default_factory=MISSING, repr=True):
        return Field(default, default_factory, repr)

    def dataclass(cls=None, /, *, init=True, repr=True, eq=True, frozen=False,
                  unsafe_hash=False, slots=False):
        def wrap(cls):
            return _process(cls, init, repr, eq, frozen, unsafe_hash, slots)

        return wrap if cls is None else wrap(cls)

    def replace(obj, /, **changes):
        """A copy of record *obj* with *changes* (``dataclasses.replace``)."""
        for f in getattr(type(obj), _FIELDS):
            if f.name not in changes:
                changes[f.name] = getattr(obj, f.name)
        return type(obj)(**changes)

    class _StandardFields:
        """``__dataclass_fields__``, made with :mod:`dataclasses` when first
        read, then kept on the class in this descriptor's place."""

        def __get__(self, obj, owner):
            import dataclasses

            out = {}
            for f in getattr(owner, _FIELDS):
                sf = dataclasses.field(
                    default=dataclasses.MISSING if f.default is MISSING else f.default,
                    default_factory=(dataclasses.MISSING if f.default_factory is MISSING
                                     else f.default_factory),
                    repr=f.repr)
                sf.name = f.name
                sf.type = f.type
                sf._field_type = dataclasses._FIELD  # what dataclasses.fields() keeps
                out[f.name] = sf
            setattr(owner, "__dataclass_fields__", out)
            return out

    def _own_fields(cls):
        own = []
        for name, ann in cls.__dict__.get("__annotations__", {}).items():
            text = ann if isinstance(ann, str) else repr(ann)
            if text.startswith(("ClassVar", "typing.ClassVar")):
                continue
            value = cls.__dict__.get(name, MISSING)
            f = value if isinstance(value, Field) else Field(value, MISSING, True)
            f.name = name
            f.type = ann
            if isinstance(value, Field):
                # the class attribute is the default, as dataclasses leaves it
                if f.default is MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, f.default)
            own.append(f)
        return own

    def _set(cls, name, value):
        """Set *name* on *cls* unless the class defines it (dataclasses' rule)."""
        if name not in cls.__dict__:
            setattr(cls, name, value)

    def _init(cls, fields, frozen):
        args, body, env = ["self"], [], {"_FACTORY": _FACTORY, "_setattr": object.__setattr__}
        seen_default = False
        for f in fields:
            n = f.name
            if f.default_factory is not MISSING:
                env[f"_f_{n}"] = f.default_factory
                args.append(f"{n}=_FACTORY")
                value = f"_f_{n}() if {n} is _FACTORY else {n}"
                seen_default = True
            elif f.default is not MISSING:
                env[f"_d_{n}"] = f.default
                args.append(f"{n}=_d_{n}")
                value = n
                seen_default = True
            elif seen_default:
                raise TypeError(f"non-default argument {n!r} follows default argument")
            else:
                args.append(n)
                value = n
            body.append(f"_setattr(self, {n!r}, {value})" if frozen else f"self.{n} = {value}")
        if hasattr(cls, "__post_init__"):
            body.append("self.__post_init__()")
        src = f"def __init__({', '.join(args)}):\n    " + ("\n    ".join(body) or "pass")
        exec(src, env)
        fn = env["__init__"]
        fn.__qualname__ = f"{cls.__qualname__}.__init__"
        return fn

    def _process(cls, init, repr, eq, frozen, unsafe_hash, slots):
        fields = {}
        for base in cls.__mro__[-1:0:-1]:
            for f in base.__dict__.get(_FIELDS, ()):
                fields[f.name] = f
        for f in _own_fields(cls):
            fields[f.name] = f
        fields = tuple(fields.values())
        names = tuple(f.name for f in fields)
        setattr(cls, _FIELDS, fields)
        setattr(cls, "__dataclass_fields__", _StandardFields())
        if init and "__init__" not in cls.__dict__:  # the class's own stays, unbuilt
            cls.__init__ = _init(cls, fields, frozen)
        if repr:
            shown = tuple(f.name for f in fields if f.repr)

            @recursive_repr()  # a record that holds itself: "...", as dataclasses prints
            def __repr__(self):
                return (f"{self.__class__.__qualname__}("
                        + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")")

            __repr__.__qualname__ = f"{cls.__qualname__}.__repr__"
            _set(cls, "__repr__", __repr__)
        key = attrgetter(*names) if names else (lambda self: ())
        if eq:
            def __eq__(self, other):
                if other.__class__ is self.__class__:
                    return key(self) == key(other)
                return NotImplemented

            __eq__.__qualname__ = f"{cls.__qualname__}.__eq__"
            _set(cls, "__eq__", __eq__)
        own_hash = cls.__dict__.get("__hash__", MISSING)
        explicit_hash = not (own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__))
        if unsafe_hash or (eq and frozen):
            if explicit_hash and unsafe_hash:
                raise TypeError(f"Cannot overwrite attribute __hash__ in class {cls.__name__}")
            if not explicit_hash:
                cls.__hash__ = lambda self: hash(key(self))
        elif eq and not explicit_hash:
            cls.__hash__ = None
        if frozen:
            def __setattr__(self, name, value):
                if type(self) is cls or name in names:
                    raise FrozenInstanceError(f"cannot assign to field {name!r}")
                super(cls, self).__setattr__(name, value)

            def __delattr__(self, name):
                if type(self) is cls or name in names:
                    raise FrozenInstanceError(f"cannot delete field {name!r}")
                super(cls, self).__delattr__(name)

            _set(cls, "__setattr__", __setattr__)
            _set(cls, "__delattr__", __delattr__)
        _set(cls, "__match_args__", names)
        if slots and "__slots__" not in cls.__dict__:
            cls = _with_slots(cls, names)
        return cls

    def _with_slots(cls, names):
        """*cls* made again with ``__slots__`` for its fields (as dataclasses does)."""
        inherited = set()
        for base in cls.__mro__[1:-1]:
            s = base.__dict__.get("__slots__", ())
            inherited.update((s,) if isinstance(s, str) else s)
        ns = dict(cls.__dict__)
        ns["__slots__"] = tuple(n for n in names if n not in inherited)
        for n in names:
            ns.pop(n, None)
        ns.pop("__dict__", None)
        ns.pop("__weakref__", None)
        qualname = cls.__qualname__
        cls = type(cls)(cls.__name__, cls.__bases__, ns)
        cls.__qualname__ = qualname
        return cls

__all__ = ["FrozenInstanceError", "dataclass", "field", "replace"]
