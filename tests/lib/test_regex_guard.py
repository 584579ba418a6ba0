"""The guard on group rules' regular expressions: catastrophic backtracking refused, useful
patterns kept."""

import pytest

from lib.regex_guard import MAX_PATTERN_LENGTH, UnsafePattern, regex_check

REFUSED = [
    "(a+)+",
    "(a*)*",
    "(a+)*b",
    "(a|a)*",
    "(a|ab)*",
    "(ab|a)+c",
    "(.*a){2,9}",
    "([a-z]+\\.)+x",
    "(x+x+)+y",
    ".*.*.*.*",
    "(a)\\1",
    "(?P<x>a)(?P=x)",
]
ACCEPTED = [
    "ops-.*",
    "[a-z0-9._-]+",
    "^[a-z]+\\.[a-z]+$",
    "(ab|cd)*",
    "(a|b)+c",
    "[a-z]{2,8}\\d{0,3}",
    "(ab){3}",
    "intern-\\d+",
]


@pytest.mark.parametrize("pattern", REFUSED)
def test_it_refuses_patterns_that_could_backtrack_catastrophically(pattern):
    with pytest.raises(UnsafePattern):
        regex_check(pattern)


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_it_accepts_linear_patterns(pattern):
    assert regex_check(pattern).pattern == pattern


def test_it_refuses_what_does_not_compile_is_empty_or_too_long():
    for pattern in ["(", "[a-", "", "a" * (MAX_PATTERN_LENGTH + 1)]:
        with pytest.raises(UnsafePattern):
            regex_check(pattern)
