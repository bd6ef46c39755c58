"""The kernel command line, split with the kernel's own quoting rules (lib/cmdline.c next_arg).

A word is `param` or `param=value`; a double quote toggles quoting so that spaces can be part
of a value, and quotes around a value or around the whole word are dropped. Unbalanced quotes
run to the end of the line, as in the kernel. Nothing here can fail: any text gives words.
"""

from __future__ import annotations

_SPACE = " \t\n\v\f\r"

Param = tuple[str, str | None]


def parse_cmdline(text: str) -> tuple[Param, ...]:
    params: list[Param] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return tuple(params)
        start = i
        quoted = text[i] == '"'
        if quoted:
            i += 1
            start = i
        in_quote = quoted
        equals = -1
        while i < n and (in_quote or text[i] not in _SPACE):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        word = text[start:i]
        end_quote = word.endswith('"')
        if equals < 0:
            params.append((word[:-1] if quoted and end_quote else word, None))
            continue
        key, value = text[start:equals], text[equals + 1 : i]
        if value.startswith('"'):
            value = value[1:]
            if end_quote and value.endswith('"'):
                value = value[:-1]
        elif quoted and end_quote:
            value = value[:-1]
        params.append((key, value))


def last_value(params: tuple[Param, ...], key: str) -> str | None:
    """The value of the last `key=value` (the kernel lets later words win)."""
    found = None
    for k, v in params:
        if k == key and v is not None:
            found = v
    return found


DEBUG = "rd.initoverlayfs.debug"


def flag(params: tuple[Param, ...], key: str) -> bool | None:
    """dracut's boolean style: `key` or `key=1` is on, `key=0` is off, absent is None."""
    result = None
    for k, v in params:
        if k == key:
            result = v is None or v.strip().lower() not in ("0", "no", "false", "off")
    return result
