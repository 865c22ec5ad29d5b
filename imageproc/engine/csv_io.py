"""Product CSV input (parse + validate) and result CSV output (formula-safe).

Pure Python on purpose: no Django import, every limit is passed in through ``CsvLimits``
so the API view, a management command and the tests all share one implementation.

Input format (one product per row)::

    S. No.,Product Name,Input Image Urls
    1,SKU1,"https://a.example/1.jpg, https://a.example/2.jpg"

``parse`` collects *every* problem it finds (with its spreadsheet row number and canonical
column name) and raises ``CsvInvalid`` once at the end, so a client can fix a file in one go.

Output: ``render_output`` streams the result CSV; every cell goes through ``escape_cell`` so that
opening the file in Excel / LibreOffice / Google Sheets cannot evaluate a formula written by a
client (CSV / formula injection).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from imageproc.engine.http import InvalidUrl, validate_url

__all__ = [
    "COLUMN_NAME",
    "COLUMN_OUTPUT",
    "COLUMN_SERIAL",
    "COLUMN_URLS",
    "FIELD_SIZE_LIMIT",
    "MAX_URL_CHARS",
    "OUTPUT_HEADER",
    "STANDARD_DIALECT",
    "URL_JOINER",
    "CsvDialect",
    "CsvInvalid",
    "CsvLayout",
    "CsvLimits",
    "CsvTooLarge",
    "ParsedCsv",
    "ParsedRow",
    "RowError",
    "encode_output",
    "escape_cell",
    "iter_parse",
    "open_csv",
    "parse",
    "render_output",
    "split_urls",
]

# --------------------------------------------------------------------------------------------
# csv.field_size_limit
#
# ``csv.field_size_limit`` is a *process-global* setting of the ``_csv`` C module: it cannot be
# set per reader, and changing it around each parse() call would race with other threads (the
# server runs several request threads). So it is set once, here, at import time.
#
# 1 MiB is above the stdlib default (128 KiB), so other users of ``csv`` in this process only
# ever see a *more* permissive limit than Python's default. It is far above any legitimate cell
# (the URL cell holds at most ``max_urls_per_row`` URLs of at most MAX_URL_CHARS each, i.e.
# 50 * 8 KiB = 400 KiB with the defaults) and far below the 20 MiB file limit, so a file that is
# one huge quoted cell (e.g. an unclosed quote swallowing the rest of the file) is rejected early
# with a clean error instead of being buffered. The total memory bound itself comes from
# ``CsvLimits.max_bytes``, not from this limit.
# --------------------------------------------------------------------------------------------
FIELD_SIZE_LIMIT = 1024 * 1024
csv.field_size_limit(FIELD_SIZE_LIMIT)

#: Longest single image URL accepted (common server / CDN request-line limits are 8 KiB).
MAX_URL_CHARS = 8192
# The database columns' sizes (products.models.Product).
MAX_SERIAL_CHARS = 255
MAX_NAME_CHARS = 1024

COLUMN_SERIAL = "S. No."
COLUMN_NAME = "Product Name"
COLUMN_URLS = "Input Image Urls"

COLUMN_OUTPUT = "Output Image Urls"
OUTPUT_HEADER = (COLUMN_SERIAL, COLUMN_NAME, COLUMN_URLS, COLUMN_OUTPUT)

#: Separator between the URLs of one cell in the *output* CSV. No space: machine-friendly, and
#: positional alignment stays visible ("a,,c" = the second image failed). ``parse`` accepts
#: both "a,b" and "a, b", so an output file can be uploaded again (its 4th column is ignored).
URL_JOINER = ","

# Header aliases, compared after _header_key() normalisation (casefold, NBSP, punctuation and
# spaces removed). The canonical names are the ones used in RowError.column.
_HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    COLUMN_SERIAL: (
        "S. No.",
        "S.No",
        "SNo",
        "Serial Number",
        "serial_number",
        "Serial No",
        "Sr. No.",
        "No",
    ),
    COLUMN_NAME: ("Product Name", "product_name", "Name"),
    COLUMN_URLS: (
        "Input Image Urls",
        "Input Image URLs",
        "Image URLs",
        "image_urls",
        "Images",
    ),
}

# Bytes per step when validating the encoding without a full decoded copy of the file.
_READ_CHUNK = 1024 * 1024
_SHOWN_CHARS = 200  # a value quoted in an error message is cut to this many characters


@dataclass(frozen=True)
class CsvLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_rows: int = 50_000
    max_urls_per_row: int = 50
    max_errors: int = 100  # errors listed; the total is still counted


@dataclass(frozen=True)
class ParsedRow:
    row: int  # spreadsheet row number (header is row 1)
    serial_number: str  # as written (stripped)
    product_name: str
    urls: tuple[str, ...]
    # The cells of the upload's other columns (CsvLayout.header less the three above), in
    # order, as written: the output CSV gives them back where they were.
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is written: what the parser found in an upload, and what the output
    is written in."""

    encoding: str = "utf-8"  # "utf-8", "utf-8-sig" (with a byte-order mark) or "cp1252"
    delimiter: str = ","  # ",", ";" or a tab

    @property
    def charset(self) -> str:
        """The Content-Type charset of a file in this dialect."""
        return "windows-1252" if self.encoding == "cp1252" else "utf-8"


#: UTF-8 without a byte-order mark, with commas (RFC 4180).
STANDARD_DIALECT = CsvDialect()


@dataclass(frozen=True)
class CsvLayout:
    """An upload's columns as written, in order (an `Output Image Urls` column of its own
    dropped: the output appends its own), and its dialect."""

    header: tuple[str, ...]
    dialect: CsvDialect


@dataclass(frozen=True)
class ParsedCsv:
    """What open_csv read: the upload's layout, then its rows as a stream (see iter_parse)."""

    layout: CsvLayout
    rows: Iterator[ParsedRow]


@dataclass(frozen=True)
class RowError:
    row: int | None  # None for file-level problems
    column: str | None  # canonical column name: "S. No.", "Product Name", "Input Image Urls" or None
    message: str


class CsvInvalid(Exception):
    """The CSV cannot be accepted. The API answers 400 with ``detail`` and ``errors``."""

    errors: list[RowError]  # at most limits.max_errors
    total: int  # total number of problems found
    detail: str  # one human sentence

    def __init__(self, errors: list[RowError], total: int | None = None) -> None:
        self.errors = list(errors)
        self.total = len(self.errors) if total is None else total
        self.detail = _detail(self.errors, self.total)
        super().__init__(self.detail)

    def __reduce__(self) -> tuple[type[CsvInvalid], tuple[list[RowError], int]]:
        return (
            CsvInvalid,
            (self.errors, self.total),
        )  # picklable (task queues, multiprocessing)


class CsvTooLarge(Exception):
    """The upload is larger than ``max_bytes`` (the API answers 413)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"The CSV is larger than the limit of {_human_bytes(max_bytes)} ({max_bytes} bytes).")

    def __reduce__(self) -> tuple[type[CsvTooLarge], tuple[int]]:
        return (CsvTooLarge, (self.max_bytes,))


def _detail(errors: list[RowError], total: int) -> str:
    if total == 1 and len(errors) == 1:
        err = errors[0]
        if err.row is None:
            return err.message
        return "The CSV has 1 problem; it is listed."
    return f"The CSV has {total} problems; the first {len(errors)} are listed."


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _show(value: str) -> str:
    """A client value for an error message: cut to ~200 chars, control characters escaped."""
    cut = value[:_SHOWN_CHARS]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return f'"{shown}…"' if len(value) > _SHOWN_CHARS else f'"{shown}"'


class _Errors:
    """Counts every problem, keeps the first ``cap``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.listed: list[RowError] = []
        self.total = 0

    def add(self, row: int | None, column: str | None, message: str) -> None:
        self.total += 1
        if len(self.listed) < self.cap:
            self.listed.append(RowError(row, column, message))

    def raise_if_any(self) -> None:
        if self.total:
            raise CsvInvalid(self.listed, self.total)


def _file_error(message: str) -> CsvInvalid:
    return CsvInvalid([RowError(None, None, message)], 1)


# --------------------------------------------------------------------------------------------
# Reading and decoding
# --------------------------------------------------------------------------------------------


def _read_limited(data: bytes | IO[bytes], max_bytes: int) -> bytes:
    """Return the bytes of ``data``; CsvTooLarge if there are more than ``max_bytes``.

    A file object is read from its current position and never more than ``max_bytes + 1``
    bytes are requested, so a 2 GB upload costs at most max_bytes + 1 bytes of memory.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data) if not isinstance(data, bytes) else data
        if len(raw) > max_bytes:
            raise CsvTooLarge(max_bytes)
        return raw
    wanted = max_bytes + 1
    first = data.read(wanted)
    if isinstance(first, str):
        raise TypeError("parse() needs a binary file object (opened in 'rb' mode), not a text one")
    chunks = [first]
    size = len(first)
    while first and size < wanted:  # short reads (pipes, sockets): go on until EOF or over the limit
        more = data.read(wanted - size)
        if not more:
            break
        chunks.append(more)
        size += len(more)
    if size > max_bytes:
        raise CsvTooLarge(max_bytes)
    return chunks[0] if len(chunks) == 1 and isinstance(chunks[0], bytes) else b"".join(chunks)


_UTF8_BOM = codecs.BOM_UTF8
# C0 controls other than TAB, LF, VT, FF, CR. In UTF-8 and in cp1252 these bytes only ever
# encode these characters (UTF-8 multi-byte sequences use bytes >= 0x80), so the raw bytes can
# be checked without decoding. NUL is checked separately for a more precise message.
_BINARY_CONTROLS = re.compile(rb"[\x01-\x08\x0e-\x1f]")
# Bytes that are undefined in Python's cp1252 codec.
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
_NOT_BLANK = re.compile(rb"\S")
_NOT_TEXT = "The file is not a text CSV file"


def _check_text(raw: bytes) -> None:
    """Reject empty, UTF-16/32, spreadsheet-workbook and other binary files."""
    if raw.startswith(
        (
            codecs.BOM_UTF32_LE,
            codecs.BOM_UTF32_BE,
            codecs.BOM_UTF16_LE,
            codecs.BOM_UTF16_BE,
        )
    ):
        raise _file_error(f"{_NOT_TEXT}: it is UTF-16/UTF-32 text. Save it as 'CSV UTF-8' and upload it again.")
    if raw.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")):
        raise _file_error(f"{_NOT_TEXT}: it looks like an Excel workbook. Save it as 'CSV UTF-8' and upload it again.")
    if b"\x00" in raw:
        raise _file_error(f"{_NOT_TEXT}: it contains NUL bytes (is it an image or another binary file?).")
    if _BINARY_CONTROLS.search(raw):
        raise _file_error(f"{_NOT_TEXT}: it contains binary control characters.")
    if not _NOT_BLANK.search(raw, len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0):  # no copy of raw
        raise _file_error("The file is empty: expected a header row (S. No., Product Name, Input Image Urls).")


def _is_utf8(raw: bytes) -> bool:
    """Validate UTF-8 chunk by chunk, so no full decoded copy of the file is built."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    try:
        for start in range(0, len(view), _READ_CHUNK):
            decoder.decode(view[start : start + _READ_CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _open_text(raw: bytes) -> tuple[io.TextIOWrapper, str]:
    """A text stream over ``raw`` (no copy: BytesIO shares an immutable bytes object), and
    the encoding found: "utf-8", "utf-8-sig" (UTF-8 with a byte-order mark) or "cp1252".

    ``newline=""`` keeps line endings untranslated as the csv module requires, while still
    splitting lines on CRLF, LF and lone CR (old Mac Excel exports).
    """
    buffer = io.BytesIO(raw)
    if _is_utf8(raw):
        encoding = "utf-8-sig" if raw.startswith(_UTF8_BOM) else "utf-8"
        return io.TextIOWrapper(buffer, encoding="utf-8-sig", newline=""), encoding
    if _CP1252_UNDEFINED.search(raw):
        raise _file_error(
            "The file is neither UTF-8 nor Windows-1252 text. Save it as 'CSV UTF-8' and upload it again."
        )
    if raw.startswith(_UTF8_BOM):  # a UTF-8 BOM on a file that is not UTF-8: drop it anyway
        buffer.seek(len(_UTF8_BOM))
    return io.TextIOWrapper(buffer, encoding="cp1252", newline=""), "cp1252"


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[\W_]+")  # Unicode-aware: also removes NBSP and other spaces


def _header_key(name: str) -> str:
    return _NON_ALNUM.sub("", name.replace("\u00a0", " ").strip().casefold())


_ALIAS_TO_COLUMN: dict[str, str] = {
    _header_key(alias): column for column, aliases in _HEADER_ALIASES.items() for alias in aliases
}


def _recognised(cells: list[str]) -> int:
    return len({_ALIAS_TO_COLUMN[k] for k in map(_header_key, cells) if k in _ALIAS_TO_COLUMN})


# The delimiters accepted, in order of preference when they recognise as many columns.
DELIMITERS = (",", ";", "\t")


def _sniff_delimiter(first_line: str) -> str:
    """``,``, ``;`` or a tab: whichever splits the header line into more of the expected
    columns."""
    best, best_score = ",", -1
    for delimiter in DELIMITERS:
        try:
            cells = next(csv.reader([first_line], delimiter=delimiter, skipinitialspace=True), [])
        except csv.Error:
            continue
        score = _recognised(cells)
        if score > best_score:  # strict: a tie keeps ","
            best, best_score = delimiter, score
    return best


# An upload's own `Output Image Urls` columns (an output CSV uploaded again, with the size
# columns of renditions too: `Output Image Urls (800px)`) are dropped: the output appends its own.
_OUTPUT_KEY = _header_key(COLUMN_OUTPUT)
_OUTPUT_KEYS = re.compile(re.escape(_OUTPUT_KEY) + r"(?:\d+px)?")


def _kept_columns(header: list[str]) -> list[int]:
    """The indexes of the columns the output gives back: every one but an `Output Image
    Urls` column and the empty names at the end of the header row (a trailing delimiter)."""
    width = len(header)
    while width and not header[width - 1].strip():
        width -= 1
    return [index for index in range(width) if not _OUTPUT_KEYS.fullmatch(_header_key(header[index]))]


def _map_header(header: list[str], errors: _Errors) -> dict[str, int]:
    """Canonical column -> index; adds an error (row 1) per missing or duplicated column."""
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        column = _ALIAS_TO_COLUMN.get(_header_key(name))
        if column is None:
            continue  # other columns are not ours: kept as they are (_kept_columns)
        if column in positions:
            first = positions[column]
            errors.add(
                1,
                column,
                f"Columns {_column_letter(first)} ({_show(header[first].strip())}) and "
                f"{_column_letter(index)} ({_show(name.strip())}) are both '{column}'; keep only one.",
            )
            continue
        positions[column] = index
    for column, aliases in _HEADER_ALIASES.items():
        if column not in positions:
            errors.add(
                1,
                column,
                f"Missing column '{column}' in the header row (accepted names: {', '.join(aliases)}).",
            )
    return positions


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------

_URL_SEPARATORS = re.compile(r"[,\r\n]+")


def split_urls(cell: str) -> list[str]:
    """Split a URL cell on commas and line breaks; trim each part; drop empty parts."""
    return [part for part in (p.strip() for p in _URL_SEPARATORS.split(cell)) if part]


def _csv_error_message(exc: csv.Error, delimiter: str) -> str:
    text = str(exc)
    if text.startswith("field larger than field limit"):
        return (
            f"A cell is larger than the limit of {_human_bytes(FIELD_SIZE_LIMIT)}; "
            "the file cannot be read from here on."
        )
    if text == "unexpected end of data":
        return 'A quoted cell is never closed (missing closing ").'
    if "expected after" in text:
        return (
            f"Unexpected text after a closing quote (expected '{delimiter}' or the end of the line); "
            "the file cannot be read from here on."
        )
    return f"The CSV cannot be read from here on: {text}."


def parse(data: bytes | IO[bytes], *, limits: CsvLimits = CsvLimits()) -> list[ParsedRow]:
    """Parse and validate a product CSV upload.

    ``data`` is the upload's bytes or a binary file object (read from its current position,
    at most ``limits.max_bytes + 1`` bytes). Returns the product rows in file order.

    Raises CsvTooLarge (-> 413) or CsvInvalid (-> 400, listing every problem found, with its
    spreadsheet row and canonical column, at most ``limits.max_errors`` of them).
    """
    return list(iter_parse(data, limits=limits))


def iter_parse(data: bytes | IO[bytes], *, limits: CsvLimits = CsvLimits()) -> Iterator[ParsedRow]:
    """``parse`` as a stream: yields the valid rows while no problem has been found yet,
    and raises CsvTooLarge or CsvInvalid at the point ``parse`` would — possibly after
    some rows were yielded, so a caller storing rows as they come does so in a transaction
    that the exception rolls back. A 20 MB upload then never exists as 200,000 objects.
    """
    yield from open_csv(data, limits=limits).rows


def open_csv(data: bytes | IO[bytes], *, limits: CsvLimits = CsvLimits()) -> ParsedCsv:
    """Read the file's header at once (CsvTooLarge, or CsvInvalid for a file that is not
    text or a header without the three columns) and return its layout, with its rows as
    the stream ``iter_parse`` yields."""
    raw = _read_limited(data, limits.max_bytes)
    _check_text(raw)
    text, encoding = _open_text(raw)
    del raw  # a file object's bytes now live only inside ``text``'s buffer

    errors = _Errors(limits.max_errors)
    first_line = text.readline()
    delimiter = _sniff_delimiter(first_line)
    reader = csv.reader(
        itertools.chain([first_line], text),
        delimiter=delimiter,
        quotechar='"',
        doublequote=True,
        skipinitialspace=True,  # `1, Shirt, "a,b"` keeps "a,b" as one quoted cell
        strict=True,  # a broken quote is an error with its row, not a silently merged file
    )

    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise _file_error(f"The header row cannot be read: {_csv_error_message(exc, delimiter)}") from None
    positions = _map_header(header, errors)
    errors.raise_if_any()  # without a usable header the rows cannot be read
    ours = set(positions.values())
    extra_columns = [index for index in _kept_columns(header) if index not in ours]
    layout = CsvLayout(
        header=tuple(header[index] for index in _kept_columns(header)),
        dialect=CsvDialect(encoding=encoding, delimiter=delimiter),
    )
    return ParsedCsv(layout, _rows(reader, header, positions, extra_columns, delimiter, limits, errors))


def _rows(
    reader: Iterator[list[str]],
    header: list[str],
    positions: dict[str, int],
    extra_columns: list[int],
    delimiter: str,
    limits: CsvLimits,
    errors: _Errors,
) -> Iterator[ParsedRow]:
    i_serial, i_name, i_urls = (
        positions[COLUMN_SERIAL],
        positions[COLUMN_NAME],
        positions[COLUMN_URLS],
    )
    width = len(header)
    row_no = 1  # spreadsheet row of the last record read; the header is row 1

    yielded = 0
    first_row_of_serial: dict[str, int] = {}
    product_rows = 0
    try:
        for cells in reader:
            row_no += 1
            if not any(cell.strip() for cell in cells):
                continue  # blank line: ignored, but it still counts as a spreadsheet row
            product_rows += 1
            if product_rows > limits.max_rows:
                errors.add(
                    row_no,
                    None,
                    f"The CSV has more than {limits.max_rows} product rows; split it into smaller files.",
                )
                break
            row = _parse_row(
                row_no,
                cells,
                width,
                i_serial,
                i_name,
                i_urls,
                limits,
                errors,
                first_row_of_serial,
                extra_columns,
            )
            if row is not None and not errors.total:
                yielded += 1  # once a problem is found the rows are no longer needed
                yield row
    except csv.Error as exc:
        errors.add(row_no + 1, None, _csv_error_message(exc, delimiter))

    errors.raise_if_any()
    if not yielded:
        raise _file_error("The CSV has no product rows.")


def _parse_row(
    row_no: int,
    cells: list[str],
    width: int,
    i_serial: int,
    i_name: int,
    i_urls: int,
    limits: CsvLimits,
    errors: _Errors,
    first_row_of_serial: dict[str, int],
    extra_columns: list[int],
) -> ParsedRow | None:
    def cell(index: int) -> str:
        return cells[index].strip() if index < len(cells) else ""

    before = errors.total
    if len(cells) > width and any(extra.strip() for extra in cells[width:]):
        errors.add(
            row_no,
            None,
            f"Unexpected extra cells: the header has {width} columns, this row has {len(cells)}. "
            "If a cell holds several image URLs, put it in double quotes.",
        )

    serial = cell(i_serial)
    if not serial:
        errors.add(row_no, COLUMN_SERIAL, "S. No. is empty.")
    elif len(serial) > MAX_SERIAL_CHARS:
        errors.add(row_no, COLUMN_SERIAL, f"S. No. is longer than {MAX_SERIAL_CHARS} characters.")
    elif serial in first_row_of_serial:
        errors.add(
            row_no,
            COLUMN_SERIAL,
            f"S. No. {_show(serial)} is already used in row {first_row_of_serial[serial]}.",
        )
    else:
        first_row_of_serial[serial] = row_no

    name = cell(i_name)
    if not name:
        errors.add(row_no, COLUMN_NAME, "Product Name is empty.")
    elif len(name) > MAX_NAME_CHARS:
        errors.add(row_no, COLUMN_NAME, f"Product Name is longer than {MAX_NAME_CHARS} characters.")

    urls = split_urls(cell(i_urls))
    if not urls:
        errors.add(row_no, COLUMN_URLS, "No image URL: at least one is required.")
    elif len(urls) > limits.max_urls_per_row:
        errors.add(
            row_no,
            COLUMN_URLS,
            f"{len(urls)} image URLs; at most {limits.max_urls_per_row} are allowed per row.",
        )
    for url in urls:
        if len(url) > MAX_URL_CHARS:
            errors.add(
                row_no,
                COLUMN_URLS,
                f"Image URL {_show(url)} is longer than {MAX_URL_CHARS} characters.",
            )
            continue
        try:
            validate_url(url)
        except InvalidUrl as exc:
            errors.add(row_no, COLUMN_URLS, f"Invalid image URL {_show(url)}: {exc}.")

    if errors.total != before:
        return None
    extra = tuple(cells[index] if index < len(cells) else "" for index in extra_columns)
    return ParsedRow(row=row_no, serial_number=serial, product_name=name, urls=tuple(urls), extra=extra)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
# A plain decimal number: optional sign, digits, optional fraction (ASCII digits only).
# Exponent forms ("-1e5"), thousands separators, currency, percentages and anything else are
# NOT treated as plain numbers, so a cell like "-1e5" or "+1,000" gets the quote prefix.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def escape_cell(value: str) -> str:
    """Neutralise a cell that a spreadsheet could evaluate as a formula.

    A value whose first character -- or first character after leading spaces, since
    LibreOffice's "trim spaces" import option would strip them -- is ``=``, ``+``, ``-``,
    ``@``, TAB, CR or LF gets a ``'`` prefix, which spreadsheets show as text. Plain decimal
    numbers (``-2``, ``+3.5``, ``-.5``) are left alone so they stay numeric; exponent forms
    such as ``-0.5e3`` are escaped (conservative: they are not "plain" numbers).
    """
    if value.lstrip(" ").startswith(_FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _url_for_cell(url: str | None) -> str:
    # Commas separate the URLs inside one cell, so a literal comma inside a URL would break the
    # positional alignment: write it percent-encoded (same resource for http(s) paths/queries).
    return "" if url is None else url.replace(",", "%2C")


OutputRow = (
    tuple[str, str, Sequence[str], Sequence[str | None]]
    | tuple[str, str, Sequence[str], Sequence[str | None], Sequence[str]]
    | tuple[str, str, Sequence[str], Sequence[str | None], Sequence[str], Sequence[Sequence[str | None]]]
)


def size_column(size: int) -> str:
    """The output CSV's column of a further rendition size: `Output Image Urls (800px)`."""
    return f"{COLUMN_OUTPUT} ({size}px)"


def render_output(
    rows: Iterable[OutputRow],
    *,
    header: Sequence[str] = (),
    delimiter: str = ",",
    min_chunk: int = 0,
    further_sizes: Sequence[int] = (),
) -> Iterator[str]:
    """Yield the result CSV as text chunks for a streaming response.

    Each row is ``(serial, name, input_urls, output_urls)`` or ``(..., extra)`` with the
    cells of the upload's other columns (ParsedRow.extra); ``output_urls[i]`` belongs to
    ``input_urls[i]`` (``None`` = failed or not done, written as an empty slot: "a,,c").
    ``header`` is the upload's (CsvLayout.header): every column comes back in its place and
    `Output Image Urls` is appended; without one, the columns are OUTPUT_HEADER.
    The first chunk is the header line; then, by default, one chunk per row. With
    ``min_chunk > 0`` rows are batched into chunks of at least that many characters (chunks
    always end on a line boundary). RFC 4180: QUOTE_MINIMAL, CRLF line endings. Encode the
    chunks with encode_output.

    ``further_sizes``: a request with rendition sizes has its first size's URLs in
    `Output Image Urls` and one more column per further size, `Output Image Urls (800px)`,
    aligned the same way; each row then carries their URL lists, in order, after ``extra``.

    Raises ValueError if a row's output list is not as long as its input list.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    # Where each of our three columns sits in the upload's header; the others take the
    # row's extra cells in order.
    positions = {_ALIAS_TO_COLUMN.get(_header_key(name)): index for index, name in enumerate(header)}
    slots = [positions.get(column) for column in (COLUMN_SERIAL, COLUMN_NAME, COLUMN_URLS)]
    if header and None in slots:
        raise ValueError(f"the header {list(header)!r} lacks one of the three columns")

    def take() -> str:
        chunk = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return chunk

    added = [size_column(size) for size in further_sizes]
    writer.writerow(
        [escape_cell(name) for name in header] + [COLUMN_OUTPUT] + added if header else [*OUTPUT_HEADER, *added]
    )
    yield take()
    for row in rows:
        serial, name, inputs, outputs = row[:4]
        if len(inputs) != len(outputs):
            raise ValueError(
                f"row {serial!r}: {len(inputs)} input URLs but {len(outputs)} output slots; they must be aligned"
            )
        ours = (serial, name, URL_JOINER.join(_url_for_cell(u) for u in inputs))
        cells: list[str] = list(ours)
        if header:
            extra = iter(row[4] if len(row) > 4 else ())
            by_slot = dict(zip(slots, ours, strict=True))
            cells = [by_slot[index] if index in by_slot else next(extra, "") for index in range(len(header))]
        cells.append(URL_JOINER.join(_url_for_cell(u) for u in outputs))
        if further_sizes:
            lists = row[5] if len(row) > 5 else ()
            if len(lists) != len(further_sizes) or any(len(urls) != len(inputs) for urls in lists):
                raise ValueError(f"row {serial!r}: one aligned URL list per further size is needed")
            cells.extend(URL_JOINER.join(_url_for_cell(u) for u in urls) for urls in lists)
        writer.writerow([escape_cell(cell) for cell in cells])
        if buffer.tell() >= min_chunk:
            yield take()
    if buffer.tell():
        yield take()


def encode_output(chunks: Iterable[str], dialect: CsvDialect = STANDARD_DIALECT) -> Iterator[bytes]:
    """The chunks of render_output as bytes in ``dialect``'s encoding, a byte-order mark
    first for "utf-8-sig". In cp1252 a character it lacks becomes "?": the upload's own
    cells came from cp1252 and the output URLs are ASCII, so only a non-ASCII
    PUBLIC_BASE_URL could meet it."""
    first = True
    for chunk in chunks:
        if dialect.encoding == "cp1252":
            yield chunk.encode("cp1252", errors="replace")
        else:
            yield (_UTF8_BOM if first and dialect.encoding == "utf-8-sig" else b"") + chunk.encode("utf-8")
        first = False
