"""The reviewers' query language: a documented dtSearch-compatible subset.

Grammar (keywords are case-insensitive; precedence from loosest to tightest)::

    query     := or
    or        := and ( "OR" and )*
    and       := near ( ["AND"] near )*            -- "AND" may be left out between clauses
    near      := unary ( ("W/" N | "PRE/" N | "NOT W/" N) unary )*
    unary     := "NOT" unary | "(" or ")" | field | phrase | words
    field     := NAME ":" ( WORD | "QUOTED" | DATE ".." DATE )
    phrase    := "quoted words"
    words     := WORD+                             -- bare adjacent words form a phrase (dtSearch)

So ``a OR b AND c`` is ``a OR (b AND c)``, ``NOT a AND b`` is ``(NOT a) AND b``, and
``apple w/5 pear`` matches both orders within five words while ``apple pre/5 pear`` needs
apple first. Wildcards inside a word: ``*`` any run of characters, ``?`` one character,
``=`` one digit. Fields: participant, number, conversation, direction, origin, type,
template, status, has (``has:attachment``), sent and archived (dates, ``YYYY-MM-DD..YYYY-MM-DD``,
inclusive). Anything else is a syntax error reported with its position, never reinterpreted.

`parse` returns a tree whose `describe()` echoes the precedence actually applied; `matches`
evaluates a tree against one document's text (tokenised the same way as the index) and fields.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Any

from archiver.errors import InvalidInput

FIELDS = frozenset({"participant", "number", "conversation", "direction", "origin", "type", "template", "status",
                    "has", "sent", "archived"})
DATE_FIELDS = frozenset({"sent", "archived"})
_WORD = re.compile(r"[\w*?=]+(?:['’.-][\w*?=]+)*", re.UNICODE)
# the words of a text: the index makes its tokens of them, the console marks the hits among them
TEXT_WORD = re.compile(r"\w+(?:['’][\w]+)*", re.UNICODE)
_NEAR = re.compile(r"(w|pre)/(\d{1,3})$", re.IGNORECASE)
_NEAR_TOKEN = re.compile(r"(?:w|pre)/(\d+)", re.IGNORECASE)


class QueryTooCostly(InvalidInput):
    """A well-formed query refused for its cost (422): too many or too broad wildcards, or it ran
    past the search time limit."""

    status, code, title = 422, "query_too_costly", "Query too costly"

    def __init__(self, message: str, query: str) -> None:
        self.query = query
        super().__init__(f"{message}: narrow the query")

    def extensions(self) -> dict[str, Any]:
        return {"query": self.query}


class QuerySyntaxError(InvalidInput):
    """A query that does not parse; `position` is where (0-based, in characters)."""

    code = "query_syntax"

    def __init__(self, message: str, position: int, query: str) -> None:
        self.position = position
        self.query = query
        self.reason = message
        super().__init__(f"{message} at position {position}: {query[:position]}\u2038{query[position:]}")

    def extensions(self) -> dict[str, Any]:
        return {"position": self.position, "query": self.query, "reason": self.reason}


def tokens(text: str) -> list[str]:
    """Words of a text as the index stores them: NFKC, case-folded."""
    return [w.casefold() for w in TEXT_WORD.findall(unicodedata.normalize("NFKC", text))]


class Glob:
    """A wildcard word (`*` any run, `?` one character, `=` one digit) matched without backtracking:
    at most len(pattern) × len(word) steps, whatever the pattern (a regex of `.*a.*a.*a` is not)."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern

    def match(self, s: str) -> bool:
        p, i, j, star, mark = self.p, 0, 0, -1, 0
        while j < len(s):
            c = p[i] if i < len(p) else ""
            if c == "*":
                star, mark, i = i, j, i + 1
            elif c and (c == "?" or c == s[j] or (c == "=" and s[j].isdigit())):
                i, j = i + 1, j + 1
            elif star >= 0:  # let the last `*` take one more character, and try again from there
                i, mark = star + 1, mark + 1
                j = mark
            else:
                return False
        return all(c == "*" for c in p[i:])


@functools.lru_cache(maxsize=4096)
def _word_regex(word: str) -> Glob:
    return Glob(word)


# -- the tree ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # one word, or a phrase

    @property
    def wildcard(self) -> bool:
        return any(c in w for w in self.words for c in "*?=")

    def describe(self) -> str:
        return self.words[0] if len(self.words) == 1 else '"' + " ".join(self.words) + '"'


@dataclass(frozen=True)
class Field:
    name: str
    value: str
    until: str | None = None  # date ranges

    def describe(self) -> str:
        return f"{self.name}:{self.value}" + (f"..{self.until}" if self.until else "")


@dataclass(frozen=True)
class Not:
    node: Node

    def describe(self) -> str:
        return f"(NOT {self.node.describe()})"


@dataclass(frozen=True)
class Bool:
    op: str  # AND | OR
    nodes: tuple[Node, ...]

    def describe(self) -> str:
        return "(" + f" {self.op} ".join(n.describe() for n in self.nodes) + ")"


@dataclass(frozen=True)
class Near:
    left: Node
    right: Node
    distance: int
    ordered: bool  # pre/N
    negated: bool  # not w/N: left, but not within N of right

    def describe(self) -> str:
        op = ("not " if self.negated else "") + ("pre" if self.ordered else "w") + f"/{self.distance}"
        return f"({self.left.describe()} {op} {self.right.describe()})"


Node = Term | Field | Not | Bool | Near


# -- the parser -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str  # word | quoted | lparen | rparen | colon | range
    text: str
    pos: int


def _lex(q: str) -> list[_Tok]:
    out: list[_Tok] = []
    i = 0
    while i < len(q):
        ch = q[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            out.append(_Tok("lparen" if ch == "(" else "rparen", ch, i))
            i += 1
        elif ch == ":":
            out.append(_Tok("colon", ch, i))
            i += 1
        elif ch == '"':
            end = q.find('"', i + 1)
            if end < 0:
                raise QuerySyntaxError("unterminated quote", i, q)
            out.append(_Tok("quoted", q[i + 1:end], i))
            i = end + 1
        elif q.startswith("..", i):
            out.append(_Tok("range", "..", i))
            i += 2
        else:
            near = _NEAR_TOKEN.match(q, i)
            if near and len(near.group(1)) > 3:  # `pre/1000` is not `pre/100` followed by "0"
                raise QuerySyntaxError("a proximity distance is at most 999", i, q)
            if near:
                out.append(_Tok("word", near.group(), i))
                i = near.end()
                continue
            m = _WORD.match(q, i)
            if not m:
                raise QuerySyntaxError(f"unexpected character {ch!r}", i, q)
            text = m.group()
            if text.endswith(".") or ".." in text:  # let a following ".." be a range operator
                text = text.split("..")[0].rstrip(".")
            out.append(_Tok("word", text, i))
            i += len(text)
    return out


MAX_DEPTH = 32  # nested groups and NOTs: deeper is refused (every level costs the evaluators a level)


class _Parser:
    def __init__(self, q: str) -> None:
        self.q = q
        self.toks = _lex(q)
        self.i = 0
        self.depth = 0

    def peek(self, k: int = 0) -> _Tok | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def next_is(self, kind: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok is not None and tok.kind == kind

    def keyword(self, tok: _Tok | None, *words: str) -> bool:
        return tok is not None and tok.kind == "word" and tok.text.lower() in words

    def fail(self, message: str, tok: _Tok | None = None) -> QuerySyntaxError:
        return QuerySyntaxError(message, tok.pos if tok else len(self.q), self.q)

    def parse(self) -> Node:
        if not self.toks:
            raise self.fail("empty query")
        node = self.parse_or()
        if (extra := self.peek()) is not None:
            raise self.fail("unexpected " + repr(extra.text), extra)
        return node

    def parse_or(self) -> Node:
        nodes = [self.parse_and()]
        while self.keyword(self.peek(), "or"):
            self.i += 1
            nodes.append(self.parse_and())
        return nodes[0] if len(nodes) == 1 else Bool("OR", tuple(nodes))

    def parse_and(self) -> Node:
        nodes = [self.parse_near()]
        while True:
            tok = self.peek()
            if self.keyword(tok, "and"):
                self.i += 1
                nodes.append(self.parse_near())
            elif tok is not None and tok.kind in ("word", "quoted", "lparen") and not self.keyword(tok, "or") \
                    and not _NEAR.match(tok.text if tok.kind == "word" else ""):
                nodes.append(self.parse_near())  # implicit AND between clauses
            else:
                break
        return nodes[0] if len(nodes) == 1 else Bool("AND", tuple(nodes))

    def parse_near(self) -> Node:
        left = self.parse_unary()
        while True:
            tok, nxt = self.peek(), self.peek(1)
            negated = self.keyword(tok, "not") and nxt is not None and nxt.kind == "word" and _NEAR.match(nxt.text)
            op = nxt if negated else tok
            m = _NEAR.match(op.text) if op is not None and op.kind == "word" else None
            if not m:
                return left
            self.i += 2 if negated else 1
            distance = int(m.group(2))
            if distance < 1:
                raise self.fail("a proximity distance must be at least 1", op)
            right = self.parse_unary()
            for side in (left, right):
                if not _positional(side):
                    raise self.fail("proximity applies to words, phrases and (a OR b) groups of them", op)
            left = Near(left, right, distance, m.group(1).lower() == "pre", bool(negated))

    def parse_unary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.fail("the query ends where a term was expected")
        if self.keyword(tok, "not") or tok.kind == "lparen":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail(f"nested more than {MAX_DEPTH} levels deep", tok)
            try:
                return self._nested(tok)
            finally:
                self.depth -= 1
        return self._term(tok)

    def _nested(self, tok: _Tok) -> Node:
        self.i += 1
        if tok.kind != "lparen":  # NOT
            return Not(self.parse_unary())
        node = self.parse_or()
        close = self.peek()
        if close is None or close.kind != "rparen":
            raise self.fail("missing closing parenthesis for the one", tok)
        self.i += 1
        return node

    def _term(self, tok: _Tok) -> Node:
        if tok.kind == "quoted":
            self.i += 1
            words = _words(_WORD.findall(tok.text))
            if not words:
                raise self.fail("empty phrase", tok)
            return Term(words)
        if tok.kind == "word" and self.next_is("colon", 1):
            return self.parse_field()
        if tok.kind != "word" or self.keyword(tok, "and", "or") or _NEAR.match(tok.text):
            raise self.fail(f"expected a term, found {tok.text!r}", tok)
        raw = []
        while (t := self.peek()) is not None and t.kind == "word" and not self.keyword(t, "and", "or", "not") \
                and not _NEAR.match(t.text) and not self.next_is("colon", 1):
            raw.append(t.text)
            self.i += 1
        words = _words(raw)
        if not words:
            raise self.fail(f"{tok.text!r} has no searchable word", tok)
        return Term(words)

    def parse_field(self) -> Node:
        name_tok = self.peek()
        assert name_tok is not None
        name = name_tok.text.lower()
        if name not in FIELDS:
            raise self.fail(f"unknown field {name_tok.text!r} (fields: {', '.join(sorted(FIELDS))})", name_tok)
        self.i += 2
        value = self.peek()
        if value is None or value.kind not in ("word", "quoted"):
            raise self.fail(f"field {name} needs a value", value)
        self.i += 1
        until = None
        if self.next_is("range"):
            self.i += 1
            end = self.peek()
            if end is None or end.kind != "word":
                raise self.fail("a range needs an end", end)
            self.i += 1
            until = end.text
        if name in DATE_FIELDS:
            for t, tok in ((value.text, value), (until, self.peek(-1))):
                if t is None:
                    continue
                try:
                    date.fromisoformat(t)
                except ValueError:
                    raise self.fail(f"{name} takes dates as YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD", tok) from None
            if until and until < value.text:
                raise self.fail("a date range must not end before it starts", value)
        elif until is not None:
            raise self.fail(f"field {name} takes no range", value)
        return Field(name, value.text, until)


def _words(raw: list[str]) -> tuple[str, ...]:
    """Query words split exactly as the index splits text (so "e-mail" is the phrase "e mail");
    a word with a wildcard is kept whole and matched against single index words."""
    out: list[str] = []
    for piece in raw:
        out += [piece.casefold()] if any(c in piece for c in "*?=") else tokens(piece)
    return tuple(out)


def _positional(node: Node) -> bool:
    return isinstance(node, Term) or (isinstance(node, Bool) and node.op == "OR"
                                      and all(isinstance(n, Term) for n in node.nodes))


MAX_WILDCARD_WORDS = 8  # words with * ? or = in one query
MAX_STARS_PER_WORD = 3  # `*` (any run) in one word; `?` and `=` stand for one character and cost little
# How broad a wildcard may be is decided against the index's word list (`audit.index.MAX_EXPANSION`).


def parse(query: str) -> Node:
    """Parse a reviewer query; raises QuerySyntaxError with the position of the problem, and
    QueryTooCostly for one whose wildcards would make it unboundedly expensive."""
    if len(query) > 4000:
        raise QuerySyntaxError("query longer than 4,000 characters", 4000, query[:4000])
    tree = _Parser(query).parse()
    wild = [w for w in _all_words(tree) if any(c in w for c in "*?=")]
    if len(wild) > MAX_WILDCARD_WORDS:
        raise QueryTooCostly(f"{len(wild)} wildcard words; at most {MAX_WILDCARD_WORDS} in one query", query)
    for w in wild:
        if all(c in "*?=" for c in w):
            raise QueryTooCostly(f"{w!r} is wildcards only", query)
        if w.count("*") > MAX_STARS_PER_WORD:
            raise QueryTooCostly(f"{w!r} has more than {MAX_STARS_PER_WORD} '*'", query)
    return tree


def _all_words(node: Node) -> list[str]:
    if isinstance(node, Term):
        return list(node.words)
    if isinstance(node, Field):
        return [node.value] if node.name not in DATE_FIELDS and node.name != "has" else []
    if isinstance(node, Bool):
        return [w for n in node.nodes for w in _all_words(n)]
    if isinstance(node, Not):
        return _all_words(node.node)
    if isinstance(node, Near):
        return _all_words(node.left) + _all_words(node.right)
    return []


def required(node: Node) -> frozenset[str] | None:
    """Words (wildcard patterns among them) of which a text must hold at least one for `node` to
    match it: a prefilter, so a text that holds none is not evaluated. None when no such set exists
    (a NOT, a field)."""
    if isinstance(node, Term):
        literal = [w for w in node.words if not _is_glob(w)]
        return frozenset({literal[0] if literal else node.words[0]})  # every word of a phrase is needed
    if isinstance(node, Bool):
        parts = [required(n) for n in node.nodes]
        if node.op == "OR":
            return None if any(x is None for x in parts) else frozenset().union(*[x for x in parts if x])
        known = [x for x in parts if x is not None]
        return min(known, key=len) if known else None  # AND: any one part's words are needed
    if isinstance(node, Near):
        if node.negated:
            return required(node.left)
        known = [x for x in (required(node.left), required(node.right)) if x is not None]
        return min(known, key=len) if known else None
    return None


# -- evaluation against one document ----------------------------------------------------------

class Words(list[str]):
    """A text's words with where each occurs, built once on first use: many queries evaluated
    over one text (supervision's lexicons) look a word up instead of scanning the text per term."""

    _at: dict[str, list[int]] | None = None
    _globs: dict[str, list[int]]

    def where(self, word: str) -> list[int]:
        if self._at is None:
            self._at, self._globs = {}, {}
            for i, w in enumerate(self):
                self._at.setdefault(w, []).append(i)
        if not _is_glob(word):
            return self._at.get(word, [])
        if word not in self._globs:
            g = _word_regex(word)
            self._globs[word] = sorted(i for w, at in self._at.items() if g.match(w) for i in at)
        return self._globs[word]

    def any_of(self, needed: frozenset[str]) -> bool:
        """Whether the text holds at least one of `needed` (words or wildcard patterns)."""
        if self._at is None:
            self.where("")
        assert self._at is not None
        return any((w in self._at) if not _is_glob(w) else bool(self.where(w)) for w in needed)


@functools.lru_cache(maxsize=4096)
def _is_glob(word: str) -> bool:
    return any(c in word for c in "*?=")


def _positions(term: Term, words: Words) -> list[tuple[int, int]]:
    """(start, end) word positions where the term occurs (a phrase spans several words)."""
    n = len(term.words)
    starts = words.where(term.words[0])
    for k in range(1, n):
        at = set(words.where(term.words[k]))
        starts = [i for i in starts if i + k in at]
    return [(i, i + n - 1) for i in starts]


def _spans(node: Node, words: Words, fields: dict[str, Any]) -> list[tuple[int, int]] | None:
    """Where a text node matches (for proximity); None when the node is not positional."""
    if isinstance(node, Term):
        return _positions(node, words)
    if isinstance(node, Bool) and node.op == "OR" and all(isinstance(n, Term) for n in node.nodes):
        return [s for n in node.nodes if isinstance(n, Term) for s in _positions(n, words)]
    return None


def matches(node: Node, text: str, fields: dict[str, Any]) -> bool:
    """Does a document (its text and field values) satisfy the query tree?"""
    return _eval(node, Words(tokens(text)), fields)


def evaluate(node: Node, words: Words, fields: dict[str, Any]) -> bool:
    """`matches` over a text's `Words` (`Words(tokens(text))`): many queries over one text tokenise
    and index it once."""
    return _eval(node, words, fields)


def _eval(node: Node, words: Words, fields: dict[str, Any]) -> bool:
    if isinstance(node, Term):
        return bool(_positions(node, words))
    if isinstance(node, Field):
        return _field(node, fields)
    if isinstance(node, Not):
        return not _eval(node.node, words, fields)
    if isinstance(node, Bool):
        results = (_eval(n, words, fields) for n in node.nodes)
        return all(results) if node.op == "AND" else any(results)
    left, right = _spans(node.left, words, fields) or [], _spans(node.right, words, fields) or []
    near = any(_close(a, b, node.distance, node.ordered) for a in left for b in right)
    return bool(left) and not near if node.negated else near


def _close(a: tuple[int, int], b: tuple[int, int], n: int, ordered: bool) -> bool:
    if a[1] < b[0]:
        return b[0] - a[1] <= n
    if not ordered and b[1] < a[0]:
        return a[0] - b[1] <= n
    return False


def _field(node: Field, fields: dict[str, Any]) -> bool:
    value = fields.get(node.name)
    if node.name in DATE_FIELDS:
        if value is None:
            return False
        day = value.date() if hasattr(value, "date") else value
        return bool(date.fromisoformat(node.value) <= day <= date.fromisoformat(node.until or node.value))
    if node.name == "has":
        return node.value.lower() in {str(v).lower() for v in (value or [])}
    values = value if isinstance(value, list | tuple | set) else [value]
    pat = _word_regex(node.value.casefold())
    return any(v is not None and pat.match(str(v).casefold()) for v in values)
