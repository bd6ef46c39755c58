"""The timings file's JSON, written without the json package.

Importing json (with its decoder, scanner and encoder) was 7 million instructions of every
boot (callgrind, natively; under QEMU TCG about 20x the time), for one small report of
strings, numbers, lists and dicts. `dumps(value)` gives the same text as
`json.dumps(value, indent=1)` for those types (tests/unit/test_jsonout.py compares them).
"""

from __future__ import annotations

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}


def _string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code > 0xFFFF:  # ASCII-only output, as json's default: a UTF-16 surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _value(value: object, depth: int) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value)
    inner, outer = "\n" + " " * (depth + 1), "\n" + " " * depth
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        items = [_value(v, depth + 1) for v in value]
        return "[" + inner + ("," + inner).join(items) + outer + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        pairs = []
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            pairs.append(_string(key) + ": " + _value(v, depth + 1))
        return "{" + inner + ("," + inner).join(pairs) + outer + "}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: object) -> str:
    """`value` as JSON, indented by one space per level, ASCII only."""
    return _value(value, 0)
