"""`record`: the subset of `dataclasses.dataclass` storage-init uses, without its start cost.

dataclasses writes each class's __init__, __repr__, __eq__ and frozen __setattr__ as source
text and compiles it while the class is created, and importing it pulls in inspect, ast, dis
and tokenize. For storage-init's 12 classes that was the largest part of its own imports:
about 40 ms of CPU natively under CPython, and with the other start-cost changes about 0.5 s
of a boot under QEMU TCG (see docs/choices.md, Freezing). `record` builds the same methods from
closures instead.

To mypy, `record` and `field` are dataclasses' own (the TYPE_CHECKING branch), so the fields,
the generated __init__ and frozenness are checked exactly as for a dataclass. Supported:
`@record` and `@record(frozen=True)`; defaults; `field(default=..., default_factory=...,
compare=...)`. Not supported (storage-init does not use them): inheritance between records,
ClassVar/InitVar fields, keyword-only fields, ordering, __post_init__.
"""

from __future__ import annotations

from . import TYPE_CHECKING

__all__ = ["FrozenInstanceError", "field", "record"]

if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, field
    from dataclasses import dataclass as record
else:
    class FrozenInstanceError(AttributeError):
        """Raised on assigning to a field of a frozen record, as dataclasses does."""

    _MISSING = object()

    class _Field:
        __slots__ = ("compare", "default", "factory")

        def __init__(self, default, factory, compare):
            self.default, self.factory, self.compare = default, factory, compare

    def field(*, default=_MISSING, default_factory=_MISSING, compare=True):
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        return _Field(default, default_factory, compare)

    def record(cls=None, /, *, frozen=False):
        if cls is None:
            return lambda cls: _make(cls, frozen)
        return _make(cls, frozen)

    def _make(cls, frozen):
        # (name, default, factory) per field, in declaration order
        fields = []
        compared = []
        for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063 (inspect is the cost)
            value = cls.__dict__.get(name, _MISSING)
            spec = value if isinstance(value, _Field) else _Field(value, _MISSING, True)
            if spec.default is _MISSING and spec.factory is _MISSING and fields and (
                    fields[-1][1] is not _MISSING or fields[-1][2] is not _MISSING):
                raise TypeError(f"non-default field {name!r} follows a default field")
            if spec.default is _MISSING:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
            fields.append((name, spec.default, spec.factory))
            if spec.compare:
                compared.append(name)
        names = tuple(f[0] for f in fields)
        qualname = cls.__qualname__

        def __init__(self, *args, **kwargs):
            if len(args) > len(fields):
                raise TypeError(f"{qualname}() takes {len(fields)} arguments, "
                                f"{len(args)} given")
            for position, (name, default, factory) in enumerate(fields):
                if position < len(args):
                    if name in kwargs:
                        raise TypeError(f"{qualname}() got multiple values for {name!r}")
                    value = args[position]
                elif name in kwargs:
                    value = kwargs.pop(name)
                elif default is not _MISSING:
                    value = default
                elif factory is not _MISSING:
                    value = factory()
                else:
                    raise TypeError(f"{qualname}() missing argument {name!r}")
                object.__setattr__(self, name, value)
            if kwargs:
                raise TypeError(f"{qualname}() got unexpected arguments {sorted(kwargs)}")

        def __repr__(self):
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
            return f"{qualname}({inner})"

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in compared)

        cls.__init__ = __init__
        cls.__repr__ = __repr__
        cls.__eq__ = __eq__
        cls.__match_args__ = names
        if frozen:
            def __setattr__(self, name, value):
                raise FrozenInstanceError(f"cannot assign to field {name!r}")

            def __delattr__(self, name):
                raise FrozenInstanceError(f"cannot delete field {name!r}")

            def __hash__(self):
                return hash(tuple(getattr(self, n) for n in compared))

            cls.__setattr__ = __setattr__
            cls.__delattr__ = __delattr__
            cls.__hash__ = __hash__
        else:
            cls.__hash__ = None  # mutable and compared by value, as dataclasses makes it
        return cls
