"""Shell-style globs as modules.alias writes them, matched without the re module.

fnmatch translates every pattern into a regex, and importing re (with enum and its compiler)
was 15 million instructions of every boot (callgrind, natively; about 20x the time under QEMU
TCG). `fnmatchcase(name, pattern)` here gives fnmatch.fnmatchcase's answer (`*`, `?`, `[set]`,
`[!set]`, ranges; a `[` without its `]` is literal), which tests/unit/test_globs.py checks
against the real one on the Debian kernels' aliases and on random patterns.
"""

from __future__ import annotations

# A pattern, parsed once: literal strings, "?" (any one character), "*" (any run), and sets
# as (negated, ranges) with ranges as (low, high) character pairs.
Token = str | tuple[bool, tuple[tuple[str, str], ...]]
_cache: dict[str, tuple[Token, ...]] = {}


def _parse_set(pattern: str, start: int) -> tuple[Token, int] | None:
    """The set starting after the `[` at `start - 1`, and the index after its `]`."""
    j = start
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 1
    if j >= len(pattern):
        return None  # no closing bracket: the `[` is a literal character
    body = pattern[start:j]
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= body[i + 2]:  # a reversed range matches nothing, as in fnmatch
                ranges.append((body[i], body[i + 2]))
            i += 3
        else:
            ranges.append((body[i], body[i]))
            i += 1
    return (negated, tuple(ranges)), j + 1


def _parse(pattern: str) -> tuple[Token, ...]:
    tokens: list[Token] = []
    literal: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        parsed = _parse_set(pattern, i + 1) if char == "[" else None
        if char in "*?" or parsed is not None:
            if literal:
                tokens.append("".join(literal))
                literal = []
            if parsed is not None:
                tokens.append(parsed[0])
                i = parsed[1]
                continue
            if not (char == "*" and tokens and tokens[-1] == "*"):
                tokens.append(char)
        else:
            literal.append(char)
        i += 1
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens)


def _one(token: Token, char: str) -> bool:
    if token == "?":
        return True
    assert isinstance(token, tuple)
    negated, ranges = token
    return any(low <= char <= high for low, high in ranges) != negated


def _fits(token: Token, name: str, n: int) -> int:
    """The length `token` matches at name[n:], or -1."""
    if isinstance(token, str) and token != "?":
        return len(token) if name.startswith(token, n) else -1
    return 1 if n < len(name) and _one(token, name[n]) else -1


def _match(name: str, tokens: tuple[Token, ...]) -> bool:
    # Every token but "*" has a fixed length, so only the last "*" ever needs to take more:
    # the classic wildcard walk, linear in practice (no regex, no backtracking blow-up).
    # Where a literal follows that "*", it takes more up to the literal's next occurrence
    # (str.find) rather than one character a turn, and a last "*" takes the rest at once: a
    # CPU's modalias is 400-800 characters, and each of its `cpu:...:feature:*0089*` aliases
    # took 0.3-0.4 ms to match or miss one character at a time (natively).
    t = n = 0
    star_t, star_n = -1, 0
    while n < len(name) or t < len(tokens):
        if t < len(tokens):
            token = tokens[t]
            if token == "*":
                if t + 1 == len(tokens):
                    return True  # a last "*" takes the rest, whatever it is
                star_t, star_n = t, n
                t += 1
                continue
            width = _fits(token, name, n)
            if width >= 0:
                t, n = t + 1, n + width
                continue
        if star_t < 0 or star_n >= len(name):
            return False
        after = tokens[star_t + 1]  # a "*" is never last here, nor followed by a "*"
        if isinstance(after, str) and after != "?":  # a literal
            star_n = name.find(after, star_n + 1)
            if star_n < 0:
                return False
        else:
            star_n += 1
        t, n = star_t + 1, star_n
    return True


def fnmatchcase(name: str, pattern: str) -> bool:
    tokens = _cache.get(pattern)
    if tokens is None:
        tokens = _cache[pattern] = _parse(pattern)
    return _match(name, tokens)
