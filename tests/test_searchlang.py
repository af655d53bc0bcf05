"""The reviewers' query language: precedence, phrases, proximity, wildcards, fields, and errors
that point at the problem (ediscovery-formats.md §5.1, §5.4; acceptance 19, 20)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from audit.searchlang import QuerySyntaxError, matches, parse

TEXT = "Please confirm the trade at market open; the order for 300 shares of ACME is filled."


@pytest.mark.parametrize(("query", "tree"), [
    ("a OR b AND c", "(a OR (b AND c))"),
    ("a AND b OR c", "((a AND b) OR c)"),
    ("NOT a AND b", "((NOT a) AND b)"),
    ("a AND NOT b", "(a AND (NOT b))"),
    ("(a OR b) AND c", "((a OR b) AND c)"),
    ("a (b OR c)", "(a AND (b OR c))"),  # AND may be left out between clauses
    ("apple pie", '"apple pie"'),  # bare adjacent words are a phrase (dtSearch)
    ('"Apple Pie" OR tart', '("apple pie" OR tart)'),
    ("apple w/5 pear OR plum", "((apple w/5 pear) OR plum)"),
    ("apple pre/3 (pear OR plum)", "(apple pre/3 (pear OR plum))"),
    ("apple not w/5 pear", "(apple not w/5 pear)"),
    ("origin:app AND sent:2026-01-01..2026-01-31", "(origin:app AND sent:2026-01-01..2026-01-31)"),
    ('participant:"bi_abc" trade', "(participant:bi_abc AND trade)"),
])
def test_precedence_is_the_documented_one_and_echoed(query: str, tree: str) -> None:
    assert parse(query).describe() == tree


@pytest.mark.parametrize(("query", "hit"), [
    ("trade AND shares", True),
    ("trade AND bonds", False),
    ("trade OR bonds", True),
    ("trade AND NOT bonds", True),
    ('"market open"', True),
    ('"open market"', False),
    ("confirm the trade", True),  # bare words: the phrase
    ("confirm trade", False),
    ("confirm w/2 trade", True),
    ("trade w/2 confirm", True),  # w/N is symmetric
    ("trade pre/2 confirm", False),  # pre/N is ordered
    ("confirm pre/2 trade", True),
    ("confirm w/1 trade", False),
    ("order w/3 (shares OR bonds)", True),
    ("trade not w/3 shares", True),
    ("order not w/3 shares", False),
    ("sha*", True),
    ("tr?de", True),
    ("tr?d", False),
    ("3==", True),  # = is one digit
    ("4==", False),
    ("acme", True),  # case-insensitive
    ("ACME's", False),
    ("market-open", True),  # split like the text: the phrase "market open"
    ("ＡＣＭＥ", True),  # full-width letters normalise (NFKC) like the index
    ("\u00e4cme", False),
])
def test_text_predicates(query: str, hit: bool) -> None:
    assert matches(parse(query), TEXT, {}) is hit


def test_field_predicates_and_inclusive_dates() -> None:
    fields = {"participant": ["bi_alice", "bi_desk"], "origin": "app", "type": "text", "has": ["attachment"],
              "sent": datetime(2026, 1, 31, 23, 59, tzinfo=UTC), "template": None}
    assert matches(parse("participant:bi_alice AND origin:app"), TEXT, fields)
    assert matches(parse("participant:bi_a*"), TEXT, fields)
    assert not matches(parse("origin:api"), TEXT, fields)
    assert matches(parse("has:attachment trade"), TEXT, fields)
    assert matches(parse("sent:2026-01-01..2026-01-31"), TEXT, fields)  # the last day is included
    assert matches(parse("sent:2026-01-31"), TEXT, fields)
    assert not matches(parse("sent:2026-02-01..2026-02-28"), TEXT, fields)
    assert not matches(parse("template:welcome"), TEXT, fields)


@pytest.mark.parametrize(("query", "where", "says"), [
    ('"unterminated phrase', 0, "unterminated quote"),
    ("(trade AND shares", 0, "missing closing parenthesis"),
    ("trade AND", 9, "ends where a term was expected"),
    ("OR trade", 0, "expected a term"),
    ("trade AND OR shares", 10, "expected a term"),
    ("w/5 trade", 0, "expected a term"),
    ("trade w/0 shares", 6, "at least 1"),
    ("sender:bob", 0, "unknown field"),
    ("sent:yesterday", 5, "YYYY-MM-DD"),
    ("sent:2026-02-01..2026-01-01", 5, "must not end before"),
    ("origin:app..api", 7, "takes no range"),
    ("(NOT trade) w/3 shares", 12, "proximity applies"),
    ("trade )", 6, "unexpected"),
    ("trade % shares", 6, "unexpected character"),
    ("", 0, "empty query"),
])
def test_malformed_queries_point_at_the_problem(query: str, where: int, says: str) -> None:
    with pytest.raises(QuerySyntaxError) as e:
        parse(query)
    assert e.value.position == where and says in str(e.value)
    assert "\u2038" in str(e.value)  # the message marks the spot in the query


def test_random_input_parses_or_fails_cleanly() -> None:
    """2,000 random queries from the language's own pieces: a tree that evaluates, or a syntax
    error with a position inside the query — never another exception."""
    import random

    pieces = ["trade", "shares", "sha*", "tr?de", "3==", '"market open"', '"', "(", ")", "AND", "OR", "NOT", "w/3",
              "pre/2", "not w/4", "origin:app", "sent:2026-01-01..2026-01-31", "sent:", ":", "..", "has:attachment",
              "acme", "%", "w/0", "\u00e9t\u00e9"]
    rng = random.Random(19)
    for _ in range(2000):
        q = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 7)))
        try:
            tree = parse(q)
        except QuerySyntaxError as e:
            assert 0 <= e.position <= len(q)
            continue
        assert parse(tree.describe()).describe() == tree.describe()  # the echo means what was run
        matches(tree, TEXT, {"origin": "app", "has": ["attachment"], "sent": datetime(2026, 1, 5, tzinfo=UTC)})
