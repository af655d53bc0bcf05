"""Lexicons for supervision: terms in the search query language, each with the reason it is there.

A lexicon is a named list of *terms* (queries of `audit.searchlang`: phrases, proximity, wildcards,
NOT) and *exceptions* (queries that, when they also match, suppress that lexicon's hits — the
disclaimer "past performance is no guarantee", a trading "buy signal", the firm's own "we will never
ask for your password"). Matching is the query evaluator the search uses, so a reviewer can paste
any term into the console's search and see what it finds.

The default lexicons (`review/lexicons.json`) cover what FINRA 3110 reviews and the SEC/CFTC's
off-channel cases look for: off-channel communication, guarantees and promised returns,
complaints, rumours and inside information, gifts and entertainment, credentials and personal
data, pressure and secrecy; in English, German, French and Spanish. Each term and lexicon carries
its reason (the rule it serves), which travels with every hit to the reviewer and the examiner.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archiver.errors import InvalidInput, StrongroomError
from audit import searchlang

DEFAULT = Path(__file__).with_name("lexicons.json")


@dataclass(frozen=True)
class Term:
    query: str
    reason: str
    node: searchlang.Node
    needs: frozenset[str] | None = None  # a text holding none of these words cannot match (`searchlang.required`)

    def matches(self, words: searchlang.Words, fields: dict[str, Any]) -> bool:
        return (self.needs is None or words.any_of(self.needs)) and searchlang.evaluate(self.node, words, fields)


@dataclass(frozen=True)
class Lexicon:
    name: str
    title: str
    reason: str
    terms: tuple[Term, ...]
    exceptions: tuple[Term, ...]


@dataclass(frozen=True)
class Hit:
    lexicon: str
    term: str  # the term's query, as written
    reason: str


def _term(doc: Any, where: str) -> Term:
    if not isinstance(doc, dict) or not isinstance(doc.get("query"), str) or not isinstance(doc.get("reason"), str):
        raise InvalidInput(f"{where}: a term is {{\"query\": …, \"reason\": …}}")
    try:
        node = searchlang.parse(doc["query"])
        return Term(doc["query"], doc["reason"], node, searchlang.required(node))
    except StrongroomError as e:
        raise InvalidInput(f"{where}: {e}") from e


def lexicons_from(doc: Any) -> tuple[Lexicon, ...]:
    """Lexicons from their JSON document, every query parsed now (an error names the term)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("lexicons"), list):
        raise InvalidInput('a lexicon document is {"lexicons": [...]}')
    out = []
    for i, lx in enumerate(doc["lexicons"]):
        if not isinstance(lx, dict) or not isinstance(lx.get("name"), str) or not lx.get("terms"):
            raise InvalidInput(f"lexicon {i}: needs a name and terms")
        name = lx["name"]
        out.append(Lexicon(name, str(lx.get("title") or name), str(lx.get("reason") or ""),
                           tuple(_term(t, f"{name} term {j}") for j, t in enumerate(lx["terms"])),
                           tuple(_term(t, f"{name} exception {j}") for j, t in enumerate(lx.get("exceptions") or []))))
    if len({lx.name for lx in out}) != len(out):
        raise InvalidInput("two lexicons share a name")
    return tuple(out)


@functools.cache
def default_lexicons() -> tuple[Lexicon, ...]:
    """The shipped lexicons, read and parsed once per process (every policy naming them shares them)."""
    return lexicons_from(json.loads(DEFAULT.read_text()))


def match(lexicons: tuple[Lexicon, ...], text: str, fields: dict[str, Any] | None = None) -> list[Hit]:
    """Every term of every lexicon that `text` matches, unless one of that lexicon's exceptions
    matches too. The words are tokenised and indexed once for all terms; a term is evaluated only
    when the text holds one of the words it cannot match without (a multi-pattern prefilter: one
    set lookup per word, instead of the evaluator, for the terms a text cannot match)."""
    words = searchlang.Words(searchlang.tokens(text))
    fields = fields or {}
    hits = []
    for lx in lexicons:
        found = [t for t in lx.terms if t.matches(words, fields)]
        if found and not any(x.matches(words, fields) for x in lx.exceptions):
            hits += [Hit(lx.name, t.query, t.reason) for t in found]
    return hits
