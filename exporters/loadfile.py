"""Concordance / Relativity load files: the DAT (document metadata) and the OPT (image cross-reference).

DAT: UTF-8 with BOM, a header row, columns separated by DC4 (0x14, shown as ¶) and quoted with
þ; newlines inside values become ®. OPT: one line per page image, ANSI, seven fields, ``Y`` on a
document's first page. Every document (an RSMF conversation slice, or an attachment of one) gets
a contiguous Bates-style control number and a one-page Group IV TIFF slip sheet, because its
native is produced as it is (SEC Data Delivery Standards). Reference: ediscovery-formats.md §2.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import queue
from typing import Any

from exporters.sinks import Writer

COLUMN, QUOTE, NEWLINE = "\x14", "\u00fe", "\u00ae"
DAT_FIELDS = ["BEGDOC", "ENDDOC", "BEGATTACH", "ENDATTACH", "PARENT_BATES", "GROUPID", "CUSTODIAN", "FROM", "TO",
              "SUBJECT", "PLATFORM", "CONVERSATION_ID", "EVENTCOLLECTIONID", "PARTICIPANTS", "MSG_COUNT",
              "BEGINDATE", "ENDDATE", "DATESENT", "TIMESENT", "TIMEZONE", "FILENAME", "FILEEXT", "FILESIZE",
              "PGCOUNT", "SHA256HASH", "NATIVEPATH", "TEXTPATH", "RSMF_VERSION", "DIRECTION", "RECORD_IDS"]


def bates(prefix: str, n: int, width: int = 7) -> str:
    return f"{prefix}{n:0{width}d}"


class DatWriter:
    def __init__(self, out: Writer) -> None:
        self.out = out
        self.rows = 0
        out.write("\ufeff".encode())
        self._line(DAT_FIELDS)

    def _line(self, values: list[str]) -> None:
        cells = [QUOTE + v.replace("\r\n", NEWLINE).replace("\n", NEWLINE).replace("\r", NEWLINE)
                 .replace(QUOTE, "") + QUOTE for v in values]
        self.out.write((COLUMN.join(cells) + "\r\n").encode("utf-8"))

    def row(self, doc: dict[str, Any]) -> None:
        unknown = set(doc) - set(DAT_FIELDS)
        if unknown:
            raise ValueError(f"not DAT fields: {sorted(unknown)}")
        self._line(["" if doc.get(f) is None else str(doc[f]) for f in DAT_FIELDS])
        self.rows += 1


class OptWriter:
    def __init__(self, out: Writer, volume: str) -> None:
        self.out, self.volume = out, volume
        self.rows = 0

    def page(self, page_id: str, image_path: str, first: bool, pages: int) -> None:
        line = f"{page_id},{self.volume},{image_path.replace('/', chr(92))},{'Y' if first else ''},,,{pages if first else ''}"
        self.out.write((line + "\r\n").encode("ascii"))
        self.rows += 1


@functools.cache
def _blank_sheet() -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("1", (612, 792), 1)  # US letter at 72 dpi: a slip sheet carries a few lines of text
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(["PRODUCED IN NATIVE FORMAT", "",
                              "The native file, its extracted text and its metadata are named",
                              "by the control number below (see the DAT load file)."]):
        draw.text((50, 60 + 20 * i), text, fill=0)
    return img


def slip_sheet(control_number: str) -> bytes:
    """A one-page bilevel Group IV TIFF saying the document was produced natively."""
    from PIL import ImageDraw

    img = _blank_sheet().copy()
    ImageDraw.Draw(img).text((480, 760), control_number, fill=0)  # Bates lower right
    buf = io.BytesIO()
    img.save(buf, format="TIFF", compression="group4", dpi=(72, 72))
    return buf.getvalue()


class SlipSheets:
    """The slip sheets of control numbers 1, 2, 3 … in order, rendered ahead by a helper process.

    Encoding a page image is pixel-bound and holds the GIL (about a millisecond each, a fifth of an
    export's CPU); control numbers are consecutive whatever the documents turn out to be, so the
    helper can render them before the exporter knows what they will be slip sheets for. It keeps at
    most `ahead` sheets queued and is stopped by `close`. Sheets carry no content, only the number.
    """

    def __init__(self, prefix: str, ahead: int = 512) -> None:
        self.prefix, self.ahead = prefix, ahead
        self._n = 0
        self._proc: Any = None
        self._queue: Any = None

    def get(self, control_number: str) -> bytes:
        if self._proc is None:  # started on first use: an empty production needs none
            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue(maxsize=self.ahead)
            self._proc = ctx.Process(target=_render_ahead, args=(self.prefix, self._queue), daemon=True,
                                     name="strongroom-slip-sheets")
            self._proc.start()
        self._n += 1
        while True:
            try:
                got: tuple[int, bytes] = self._queue.get(timeout=1)
                n, data = got
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"the slip-sheet renderer stopped (exit code {self._proc.exitcode})") from None
        if bates(self.prefix, n) != control_number or n != self._n:
            raise RuntimeError(f"slip sheet {n} came for control number {control_number}")
        return data

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join()
            self._queue.close()
            self._proc = None


def _render_ahead(prefix: str, out: Any) -> None:
    parent = os.getppid()
    n = 0
    while True:
        n += 1
        sheet = (n, slip_sheet(bates(prefix, n)))
        while True:
            try:
                out.put(sheet, timeout=2)
                break
            except queue.Full:
                if os.getppid() != parent:  # the exporter died without stopping us: stop too
                    return
