"""The guard on administrators' regular expressions (group rules): anchored, compiled, short, and
refused when Python's backtracking engine could take exponential (or high polynomial) time on them.

Checked on the parsed pattern (`re._parser`, the tree `re.compile` itself builds), refusing:
- a repeat (with a maximum above 1) of a subpattern that itself repeats a variable number of times
  (`(a+)+`, `(a*)*`, `(a|b+){2,9}`): the engine can split a run of characters between the two
  levels in exponentially many ways;
- a repeat of an alternation whose branches can start with a common character (`(a|a)*`,
  `(a|ab)*`, `(\\w|\\d)+`): each character may be taken by either branch;
- more than three unbounded repeats in one pattern (`.*.*.*.*`: polynomial blow-up);
- back-references, which no engine matches in bounded time.
The check is conservative: a safe pattern may be refused (use `email_domain` / `email_suffix`
for plain domains). The inputs it runs on are an email or a username (at most 254 characters).
"""

import re
import re._constants as C  # noqa: N812
import re._parser as sre
from collections.abc import Iterable
from typing import Any, TypeAlias

MAX_PATTERN_LENGTH = 200
MAX_UNBOUNDED_REPEATS = 3
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT)
ANY = None  # a first-character set that may be any character
_CATEGORY_RANGES = {C.CATEGORY_DIGIT: [(48, 57)], C.CATEGORY_SPACE: [(9, 13), (32, 32)]}


# A parsed subpattern: (opcode, argument) pairs as `re._parser` builds them (untyped upstream).
_Items: TypeAlias = Iterable[tuple[Any, Any]]
# Character ranges (inclusive code points) a subpattern can start with; None (ANY) for unknown.
_Ranges: TypeAlias = list[tuple[int, int]] | None


class UnsafePattern(ValueError):
    pass


def regex_check(pattern: str) -> re.Pattern:
    """The compiled pattern, or UnsafePattern saying why not. Callers match with `fullmatch`."""
    if not isinstance(pattern, str) or not pattern:
        raise UnsafePattern("a regular expression is required")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePattern(f"at most {MAX_PATTERN_LENGTH} characters")
    try:
        compiled = re.compile(pattern)
        tree = sre.parse(pattern)
    except re.error as error:
        raise UnsafePattern(f"does not compile: {error}") from None
    unbounded = _walk(tree, under_repeat=False)
    if unbounded > MAX_UNBOUNDED_REPEATS:
        raise UnsafePattern(f"more than {MAX_UNBOUNDED_REPEATS} unbounded repeats (* or +) could backtrack for long")
    return compiled


def _walk(items: _Items, *, under_repeat: bool) -> int:
    """Raises on the first unsafe construct; returns the number of unbounded repeats seen."""
    count = 0
    for op, av in items:
        if op in (C.GROUPREF, C.GROUPREF_EXISTS):
            raise UnsafePattern("back-references are not allowed")
        if op in _REPEATS:
            low, high, body = av
            count += high == C.MAXREPEAT
            if high > 1:
                if under_repeat and high != low:
                    raise UnsafePattern("nested quantifiers (like (a+)+) could backtrack catastrophically")
                if _varies(body):
                    raise UnsafePattern("nested quantifiers (like (a+)+) could backtrack catastrophically")
                _check_alternations(body)
            count += _walk(body, under_repeat=under_repeat or high > 1)
        elif op == C.SUBPATTERN:
            count += _walk(av[-1], under_repeat=under_repeat)
        elif op == C.BRANCH:
            for branch in av[1]:
                count += _walk(branch, under_repeat=under_repeat)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            count += _walk(av[1], under_repeat=under_repeat)
        elif op == C.ATOMIC_GROUP:
            count += _walk(av, under_repeat=under_repeat)
    return count


def _varies(items: _Items) -> bool:
    """Whether the subpattern contains a repeat of variable count (it can match runs of
    different lengths)."""
    for op, av in items:
        if op in _REPEATS and (av[0] != av[1] or _varies(av[2])):
            return True
        if op == C.SUBPATTERN and _varies(av[-1]):
            return True
        if op == C.BRANCH and any(_varies(b) for b in av[1]):
            return True
        if op == C.ATOMIC_GROUP and _varies(av):
            return True
    return False


def _check_alternations(items: _Items) -> None:
    """Inside a repeated subpattern: an alternation whose branches may start alike is refused."""
    for op, av in items:
        if op == C.BRANCH:
            firsts = [_first(branch) for branch in av[1]]
            for i, a in enumerate(firsts):
                for b in firsts[i + 1 :]:
                    if _overlap(a, b):
                        raise UnsafePattern(
                            "an alternation whose branches can match the same text, under a repeat, "
                            "could backtrack catastrophically"
                        )
            for branch in av[1]:
                _check_alternations(branch)
        elif op == C.SUBPATTERN:
            _check_alternations(av[-1])


def _first(items: _Items) -> _Ranges:
    """The ranges of characters a subpattern can start with, or ANY (unknown / any / empty)."""
    for op, av in items:
        if op in (C.AT,):
            continue
        if op == C.LITERAL:
            return [(av, av)]
        if op == C.IN:
            return _in_ranges(av)
        if op == C.SUBPATTERN:
            return _first(av[-1])
        if op in _REPEATS and av[0] >= 1:
            return _first(av[2])
        return ANY
    return ANY  # an empty branch matches anything's prefix


def _in_ranges(av: _Items) -> _Ranges:
    ranges: list[tuple[int, int]] = []
    for op, value in av:
        if op == C.LITERAL:
            ranges.append((value, value))
        elif op == C.RANGE:
            ranges.append(value)
        elif op == C.CATEGORY and value in _CATEGORY_RANGES:
            ranges.extend(_CATEGORY_RANGES[value])
        else:
            return ANY  # negated sets, \w, \S ...: treated as any character
    return ranges


def _overlap(a: _Ranges, b: _Ranges) -> bool:
    if a is ANY or b is ANY:
        return True
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)
