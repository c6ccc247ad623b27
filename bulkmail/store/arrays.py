"""Arrays for the group commit's statements, encoded straight into PostgreSQL's
binary array format.

psycopg adapts a Python list by inspecting it for its element type and
dimensions and then dumping each element through its generic machinery; for
the group commit's twelve short arrays that was ~84 us of Python per commit
(a third of the commit's client CPU in scenario e).  Here each column's type
is known, so an array is a few ``struct.pack`` calls: ~30 us for the same
twelve.  The wrappers are private types with dumpers of their own
(:func:`register`), so nothing else a connection adapts changes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

__all__ = ["BoolArray", "Float8Array", "Int4Array", "Int8Array", "TextArray", "register"]

_HEAD = struct.Struct("!iiIii")  # ndim, has nulls, element oid, length, lower bound
_EMPTY = struct.Struct("!iiI")
_NULL = b"\xff\xff\xff\xff"
_I4 = struct.Struct("!ii")
_I8 = struct.Struct("!iq")
_F8 = struct.Struct("!id")
_LEN = struct.Struct("!i")
_TRUE, _FALSE = b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x00"

# element types' oids, and their arrays'
_BOOL, _INT4, _INT8, _TEXT, _FLOAT8 = 16, 23, 20, 25, 701
_ARRAY_OIDS = {_BOOL: 1000, _INT4: 1007, _INT8: 1016, _TEXT: 1009, _FLOAT8: 1022}


class _Array:
    """An encoded one-dimensional array (its bytes, ready to send)."""

    __slots__ = ("data",)
    element_oid = 0

    def __init__(self, data: bytes) -> None:
        self.data = data


def _encode(oid: int, length: int, nulls: bool, body: list[bytes]) -> bytes:
    if not length:
        return _EMPTY.pack(0, 0, oid)
    return _HEAD.pack(1, int(nulls), oid, length, 1) + b"".join(body)


class TextArray(_Array):
    __slots__ = ()
    element_oid = _TEXT

    @classmethod
    def of(cls, values: Sequence[str | None]) -> TextArray:
        body: list[bytes] = []
        nulls = False
        for value in values:
            if value is None:
                body.append(_NULL)
                nulls = True
            else:
                raw = value.encode()
                body.append(_LEN.pack(len(raw)))
                body.append(raw)
        return cls(_encode(_TEXT, len(values), nulls, body))


class Int4Array(_Array):
    __slots__ = ()
    element_oid = _INT4

    @classmethod
    def of(cls, values: Sequence[int | None]) -> Int4Array:
        nulls = None in values
        body = [_NULL if v is None else _I4.pack(4, v) for v in values]
        return cls(_encode(_INT4, len(values), nulls, body))


class Int8Array(_Array):
    __slots__ = ()
    element_oid = _INT8

    @classmethod
    def of(cls, values: Sequence[int | None]) -> Int8Array:
        nulls = None in values
        body = [_NULL if v is None else _I8.pack(8, v) for v in values]
        return cls(_encode(_INT8, len(values), nulls, body))


class Float8Array(_Array):
    __slots__ = ()
    element_oid = _FLOAT8

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Float8Array:
        nulls = None in values
        body = [_NULL if v is None else _F8.pack(8, v) for v in values]
        return cls(_encode(_FLOAT8, len(values), nulls, body))


class BoolArray(_Array):
    __slots__ = ()
    element_oid = _BOOL

    @classmethod
    def of(cls, values: Sequence[bool]) -> BoolArray:
        body = [_TRUE if v else _FALSE for v in values]
        return cls(_encode(_BOOL, len(values), False, body))


def _dumper(array: type[_Array]) -> type[Dumper]:
    class ArrayDumper(Dumper):
        format = Format.BINARY
        oid = _ARRAY_OIDS[array.element_oid]

        def dump(self, obj: _Array) -> bytes:
            return obj.data

    ArrayDumper.__name__ = array.__name__ + "Dumper"
    return ArrayDumper


def register(adapters: AdaptersMap) -> None:
    """Teach a connection's adapters (or psycopg's) to send the arrays above."""
    for array in (TextArray, Int4Array, Int8Array, Float8Array, BoolArray):
        adapters.register_dumper(array, _dumper(array))
