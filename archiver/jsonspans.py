"""Locate the exact text of every ``entry[i].changes[j]`` inside a webhook body.

Meta signs the body as sent (unicode-escaped); re-serialising parsed JSON changes the bytes.
So each change is archived as the exact slice of the body it came from, and the envelope
around them as literal pieces, which together re-create the body byte for byte:

    body == pieces[0] + change[0] + pieces[1] + change[1] + … + pieces[n]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# the C string scanner the json module itself uses; typeshed does not declare it
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class SpanError(ValueError):
    """The body is not an envelope of the shape `{"entry":[{"changes":[…]}]}`."""


@dataclass(frozen=True, slots=True)
class ChangeSpan:
    entry_index: int
    change_index: int
    start: int  # character offsets into the decoded text
    end: int


def _ws(s: str, i: int) -> int:
    m = _WS.match(s, i)
    assert m is not None  # `[…]*` matches at every offset, if only the empty string
    return m.end()


def _skip_value(s: str, i: int) -> int:
    try:
        return _DECODER.raw_decode(s, i)[1]
    except json.JSONDecodeError as e:
        raise SpanError(f"invalid JSON value at offset {i}: {e.msg}") from e


def _members(s: str, i: int) -> Generator[tuple[str, int], int, int]:
    """Yield (key, value_start) of an object at `i`; the caller must advance via `send`."""
    if s[i : i + 1] != "{":
        raise SpanError(f"expected an object at offset {i}")
    i = _ws(s, i + 1)
    if s[i : i + 1] == "}":
        return i + 1
    while True:
        if s[i : i + 1] != '"':
            raise SpanError(f"expected a key at offset {i}")
        key, i = _scanstring(s, i + 1)
        i = _ws(s, i)
        if s[i : i + 1] != ":":
            raise SpanError(f"expected ':' at offset {i}")
        i = _ws(s, i + 1)
        i = yield key, i
        i = _ws(s, i)
        if s[i : i + 1] == "}":
            return i + 1
        if s[i : i + 1] != ",":
            raise SpanError(f"expected ',' or '}}' at offset {i}")
        i = _ws(s, i + 1)


def _walk_object(s: str, i: int, on_member: Callable[[str, int], int]) -> int:
    gen = _members(s, i)
    try:
        key, start = next(gen)
        while True:
            key, start = gen.send(on_member(key, start))
    except StopIteration as stop:
        end: int = stop.value
        return end


def _walk_array(s: str, i: int, on_item: Callable[[int, int], int]) -> int:
    if s[i : i + 1] != "[":
        raise SpanError(f"expected an array at offset {i}")
    i = _ws(s, i + 1)
    if s[i : i + 1] == "]":
        return i + 1
    index = 0
    while True:
        i = _ws(s, on_item(index, i))
        index += 1
        if s[i : i + 1] == "]":
            return i + 1
        if s[i : i + 1] != ",":
            raise SpanError(f"expected ',' or ']' at offset {i}")
        i = _ws(s, i + 1)


def change_spans(text: str) -> list[ChangeSpan]:
    """Spans of every change of every entry, in document order."""
    spans: list[ChangeSpan] = []

    def on_change(entry_index: int) -> Callable[[int, int], int]:
        def visit(change_index: int, start: int) -> int:
            end = _skip_value(text, start)
            spans.append(ChangeSpan(entry_index, change_index, start, end))
            return end

        return visit

    def on_entry(entry_index: int, start: int) -> int:
        def member(key: str, vstart: int) -> int:
            if key == "changes":
                return _walk_array(text, vstart, on_change(entry_index))
            return _skip_value(text, vstart)

        return _walk_object(text, start, member)

    def top(key: str, vstart: int) -> int:
        if key == "entry":
            return _walk_array(text, vstart, on_entry)
        return _skip_value(text, vstart)

    end = _walk_object(text, _ws(text, 0), top)
    if _ws(text, end) != len(text):
        raise SpanError(f"trailing data after the envelope at offset {end}")
    return spans


def split_pieces(text: str, spans: list[ChangeSpan]) -> list[str]:
    """The literal text around the spans (len(spans) + 1 pieces)."""
    pieces, pos = [], 0
    for sp in spans:
        pieces.append(text[pos : sp.start])
        pos = sp.end
    pieces.append(text[pos:])
    return pieces


def join_pieces(pieces: list[str], changes: list[str]) -> str:
    if len(pieces) != len(changes) + 1:
        raise ValueError(f"{len(pieces)} pieces cannot surround {len(changes)} changes")
    out = [pieces[0]]
    for change, piece in zip(changes, pieces[1:], strict=True):
        out += [change, piece]
    return "".join(out)
