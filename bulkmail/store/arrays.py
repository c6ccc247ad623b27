"""Arrays for the group commit's statements, encoded straight into PostgreSQL's
binary array format.

psycopg adapts a Python list by inspecting it for its element type and
dimensions and then dumping each element through its generic machinery; for
the group commit's twelve short arrays that was ~84 us of Python per commit
(a third of the commit's client CPU in scenario e).  Here each column's type
is known, so an array is a few ``struct.pack`` calls: ~30 us for the same
twelve.  The bytes go to PostgreSQL as they are (:mod:`~bulkmail.store.direct`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["bool_array", "float8_array", "int4_array", "int8_array", "text_array"]

_HEAD = struct.Struct("!iiIii")  # ndim, has nulls, element oid, length, lower bound
_EMPTY = struct.Struct("!iiI")
_NULL = b"\xff\xff\xff\xff"
_I4 = struct.Struct("!ii")
_I8 = struct.Struct("!iq")
_F8 = struct.Struct("!id")
_LEN = struct.Struct("!i")
_TRUE, _FALSE = b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x00"

# the element types' oids
_BOOL, _INT4, _INT8, _TEXT, _FLOAT8 = 16, 23, 20, 25, 701


def _encode(oid: int, length: int, nulls: bool, body: list[bytes]) -> bytes:
    if not length:
        return _EMPTY.pack(0, 0, oid)
    return _HEAD.pack(1, int(nulls), oid, length, 1) + b"".join(body)


def text_array(values: Sequence[str | None]) -> bytes:
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
    return _encode(_TEXT, len(values), nulls, body)


def _fixed(oid: int, element: struct.Struct, values: Sequence[float | None]) -> bytes:
    """An array of a fixed-size type: each element its length, then its value."""
    size = element.size - 4
    body = [_NULL if v is None else element.pack(size, v) for v in values]
    return _encode(oid, len(values), None in values, body)


def int4_array(values: Sequence[int | None]) -> bytes:
    return _fixed(_INT4, _I4, values)


def int8_array(values: Sequence[int | None]) -> bytes:
    return _fixed(_INT8, _I8, values)


def float8_array(values: Sequence[float | None]) -> bytes:
    return _fixed(_FLOAT8, _F8, values)


def bool_array(values: Sequence[bool]) -> bytes:
    return _encode(_BOOL, len(values), False, [_TRUE if v else _FALSE for v in values])
