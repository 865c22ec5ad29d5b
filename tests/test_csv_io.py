"""Tests for imageproc.engine.csv_io: product CSV parsing/validation and formula-safe output."""

from __future__ import annotations

import csv
import io
import pickle
from typing import Any

import pytest

from imageproc.engine import csv_io
from imageproc.engine.csv_io import (
    FIELD_SIZE_LIMIT,
    MAX_URL_CHARS,
    OUTPUT_HEADER,
    CsvInvalid,
    CsvLimits,
    CsvTooLarge,
    ParsedRow,
    RowError,
    escape_cell,
    parse,
    render_output,
)

HEADER = "S. No.,Product Name,Input Image Urls\r\n"
SERIAL, NAME, URLS = "S. No.", "Product Name", "Input Image Urls"
A, B, C = (
    "https://img.example.com/a.jpg",
    "https://img.example.com/b.jpg",
    "http://img.example.com/c.png",
)


def csv_bytes(*lines: str, header: str = HEADER, encoding: str = "utf-8") -> bytes:
    return (header + "".join(line + "\r\n" for line in lines)).encode(encoding)


def invalid(data: bytes, limits: CsvLimits | None = None) -> CsvInvalid:
    with pytest.raises(CsvInvalid) as info:
        parse(data, limits=limits or CsvLimits())
    return info.value


def triples(exc: CsvInvalid) -> list[tuple[int | None, str | None]]:
    return [(e.row, e.column) for e in exc.errors]


# ------------------------------------------------------------------------------------------
# Parsing: encodings, delimiters, headers, URL cells, numbering
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["no-bom", "bom"])
def test_utf8_with_or_without_bom(bom: bytes) -> None:
    data = bom + csv_bytes(f'1,Café ☕,"{A}, {B}"', f"2,Shirt,{C}")
    assert parse(data) == [
        ParsedRow(row=2, serial_number="1", product_name="Café ☕", urls=(A, B)),
        ParsedRow(row=3, serial_number="2", product_name="Shirt", urls=(C,)),
    ]


def test_cp1252_fallback() -> None:
    data = csv_bytes(f"1,Café – “quoted”,{A}", encoding="cp1252")
    assert b"Caf\xe9" in data  # really not UTF-8
    assert parse(data)[0].product_name == "Café – “quoted”"


def test_utf8_bom_on_a_cp1252_file_is_dropped() -> None:
    data = b"\xef\xbb\xbf" + csv_bytes(f"1,Caf\xe9,{A}", encoding="latin-1")
    assert parse(data) == [ParsedRow(2, "1", "Café", (A,))]


def test_neither_utf8_nor_cp1252() -> None:
    exc = invalid(csv_bytes(f"1,x,{A}") + b"2,\x81\xff,https://x.example/\r\n")
    assert triples(exc) == [(None, None)]
    assert "neither UTF-8 nor Windows-1252" in exc.errors[0].message


def test_semicolon_delimiter() -> None:
    data = csv_bytes(
        f'1;Shirt;"{A},{B}"',
        f"2;Name, with comma;{C}",
        header="S. No.;Product Name;Input Image Urls\n",
    )
    assert parse(data) == [
        ParsedRow(2, "1", "Shirt", (A, B)),
        ParsedRow(3, "2", "Name, with comma", (C,)),
    ]


def test_comma_delimiter_wins_even_if_cells_contain_semicolons() -> None:
    data = csv_bytes(f"1;2,Shirt;blue,{A}")
    assert parse(data) == [ParsedRow(2, "1;2", "Shirt;blue", (A,))]


@pytest.mark.parametrize(
    "serial",
    ["S. No.", "S.No", "SNo", "Serial Number", "serial_number", "No", " s. no. "],
)
@pytest.mark.parametrize("name", ["Product Name", "product_name", "Name", "PRODUCT\u00a0NAME"])
@pytest.mark.parametrize(
    "urls",
    ["Input Image Urls", "Image URLs", "image_urls", "Input Image URLs", "Images"],
)
def test_header_variants(serial: str, name: str, urls: str) -> None:
    header = ",".join(f'"{h}"' if "," in h else h for h in (serial, name, urls)) + "\n"
    assert parse(csv_bytes(f"7,Shirt,{A}", header=header)) == [ParsedRow(2, "7", "Shirt", (A,))]


def test_header_punctuation_and_unicode_spaces_are_ignored() -> None:
    header = "S/No,\u2007Product-Name:\u202f,(Input\u00a0Image\tURLs)\n"
    assert parse(csv_bytes(f"7,Shirt,{A}", header=header)) == [ParsedRow(2, "7", "Shirt", (A,))]


def test_original_design_header_and_column_order_and_extra_columns() -> None:
    data = csv_bytes(f"{A},note,Shirt,,9", header="image_urls,comment,product_name,,serial_number\n")
    # The other columns' cells are kept, in order, for the output (an unnamed one too).
    assert parse(data) == [ParsedRow(2, "9", "Shirt", (A,), extra=("note", ""))]


def test_url_cell_split_on_commas_and_line_breaks() -> None:
    cell = f" {A} ,, {B}\r\n\r\n{C}\n,\n {A}\r{B} "
    data = csv_bytes(f'1,Shirt,"{cell}"')
    # Trimmed, empties dropped, duplicates kept (the pipeline deduplicates).
    assert parse(data)[0].urls == (A, B, C, A, B)


def test_cells_are_stripped_and_space_after_delimiter_is_allowed() -> None:
    data = csv_bytes(f'  1 , \u00a0Shirt  , "{A},{B}"')
    assert parse(data) == [ParsedRow(2, "1", "Shirt", (A, B))]


def test_blank_lines_ignored_but_counted() -> None:
    data = csv_bytes("", f"1,a,{A}", ",,", " , ,  ", f'2,"multi\nline",{B}', "", f"3,c,{C}", "")
    rows = parse(data)
    # Row 2 blank; 3 data; 4 and 5 blank; 6 data (one record over two lines); 7 blank; 8 data.
    assert [(r.row, r.serial_number) for r in rows] == [(3, "1"), (6, "2"), (8, "3")]
    assert rows[1].product_name == "multi\nline"


def test_row_numbers_in_errors_count_blank_lines_and_multiline_records() -> None:
    data = csv_bytes(f'1,"two\nlines","{A}\n{B}"', "", ",,", f"2,,{A}")
    assert triples(invalid(data)) == [(5, NAME)]


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_line_endings(newline: str) -> None:
    text = newline.join(["S. No.,Product Name,Input Image Urls", f"1,a,{A}", "", f"2,b,{B}"]) + newline
    assert [(r.row, r.urls) for r in parse(text.encode())] == [(2, (A,)), (4, (B,))]


def test_file_object_is_read_from_its_position() -> None:
    stream = io.BytesIO(b"junk" + csv_bytes(f"1,a,{A}"))
    stream.seek(4)
    assert parse(stream) == [ParsedRow(2, "1", "a", (A,))]


def test_ten_thousand_copies_of_one_url() -> None:
    data = csv_bytes(*(f"{i},Product {i},{A}" for i in range(1, 10_001)))
    rows = parse(data)
    assert len(rows) == 10_000
    assert rows[-1] == ParsedRow(10_001, "10000", "Product 10000", (A,))
    assert {r.urls for r in rows} == {(A,)}


def test_field_size_limit_is_set_at_import() -> None:
    assert csv.field_size_limit() == FIELD_SIZE_LIMIT == 1024 * 1024


# ------------------------------------------------------------------------------------------
# Parsing: every kind of error, with its exact row and column
# ------------------------------------------------------------------------------------------

ROW_ERRORS: list[tuple[str, list[str], list[tuple[int | None, str | None, str]]]] = [
    ("empty serial", [f"1,a,{A}", f" ,b,{A}"], [(3, SERIAL, "S. No. is empty")]),
    ("empty name", [f"1,a,{A}", f"2, ,{A}"], [(3, NAME, "Product Name is empty")]),
    ("no url", ["1,a,"], [(2, URLS, "No image URL")]),
    ("only separators", ['1,a," , ,\n "'], [(2, URLS, "No image URL")]),
    ("short row", ["1,a"], [(2, URLS, "No image URL")]),
    (
        "bad scheme",
        ["1,a,ftp://img.example.com/a.jpg"],
        [(2, URLS, '"ftp://img.example.com/a.jpg": only http')],
    ),
    (
        "javascript",
        ["1,a,javascript:alert(1)"],
        [(2, URLS, '"javascript:alert(1)": only http')],
    ),
    ("no scheme", ["1,a,img.example.com/a.jpg"], [(2, URLS, "only http and https")]),
    (
        "credentials",
        ["1,a,https://user:pw@img.example.com/a.jpg"],
        [
            (
                2,
                URLS,
                '"https://user:pw@img.example.com/a.jpg": URL must not contain credentials',
            )
        ],
    ),
    (
        "backslash",
        ["1,a,https://img.example.com\\@evil/a.jpg"],
        [(2, URLS, "backslash")],
    ),
    (
        "inner space",
        ['1,a,"https://img.example.com/a b.jpg"'],
        [(2, URLS, "whitespace")],
    ),
    ("no host", ["1,a,https:///a.jpg"], [(2, URLS, "no host")]),
    (
        "duplicate serial names first row",
        [f"5,a,{A}", f"6,b,{A}", f"5,c,{B}", f" 5 ,d,{C}"],
        [
            (4, SERIAL, 'S. No. "5" is already used in row 2'),
            (5, SERIAL, 'S. No. "5" is already used in row 2'),
        ],
    ),
    (
        "extra cells",
        [f"1,a,{A},,{B}"],
        [(2, None, "Unexpected extra cells: the header has 3 columns, this row has 5")],
    ),
    (
        "url too long",
        [f"1,a,{A}?{'q' * MAX_URL_CHARS}"],
        [(2, URLS, f"longer than {MAX_URL_CHARS} characters")],
    ),
]


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in ROW_ERRORS], ids=[c[0] for c in ROW_ERRORS])
def test_row_errors(lines: list[str], expected: list[tuple[int | None, str | None, str]]) -> None:
    exc = invalid(csv_bytes(*lines))
    assert triples(exc) == [(row, column) for row, column, _ in expected]
    for error, (_, _, text) in zip(exc.errors, expected, strict=True):
        assert text in error.message
    assert exc.total == len(expected)


def test_extra_cells_that_are_empty_are_fine() -> None:
    assert parse(csv_bytes(f"1,a,{A},, ,")) == [ParsedRow(2, "1", "a", (A,))]


def test_too_many_urls() -> None:
    limits = CsvLimits(max_urls_per_row=3)
    ok = csv_bytes(f'1,a,"{A},{B},{C}"')
    assert parse(ok, limits=limits)[0].urls == (A, B, C)
    exc = invalid(csv_bytes(f"1,a,{A}", f'2,b,"{A},{B},{C},{A}"'), limits)
    assert exc.errors == [RowError(3, URLS, "4 image URLs; at most 3 are allowed per row.")]


def test_too_many_rows_stops_there() -> None:
    limits = CsvLimits(max_rows=2)
    assert len(parse(csv_bytes(f"1,a,{A}", "", f"2,b,{A}", ""), limits=limits)) == 2  # blank lines don't count
    exc = invalid(csv_bytes(f"1,a,{A}", "", f"2,b,{A}", f"3,c,{A}", "4,,"), limits)
    assert triples(exc) == [(5, None)]  # row 6's problems are not looked at
    assert exc.total == 1
    assert "more than 2 product rows" in exc.errors[0].message


def test_error_message_truncates_long_urls_and_escapes_controls() -> None:
    url = "ftp://img.example.com/" + "x" * 1000
    exc = invalid(csv_bytes(f'1,a,"{url}"', '2,b,"https://img.example.com/\tx"'))
    first, second = (e.message for e in exc.errors)
    assert url[:200] in first and url[:201] not in first and "…" in first
    assert len(first) < 300
    assert '"https://img.example.com/\\tx"' in second  # the TAB is shown escaped


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("Product Name,Input Image Urls\n", [SERIAL]),
        ("S. No.,Input Image Urls\n", [NAME]),
        ("S. No.,Product Name\n", [URLS]),
        ("Serial,Title,Pictures\n", [SERIAL, NAME, URLS]),
        (f"1,a,{A}\n", [SERIAL, NAME, URLS]),  # no header at all
    ],
)
def test_missing_columns(header: str, missing: list[str]) -> None:
    exc = invalid(csv_bytes(f"1,a,{A}", header=header))
    assert triples(exc) == [(1, column) for column in missing]
    assert all("Missing column" in e.message for e in exc.errors)


def test_duplicate_header_column() -> None:
    exc = invalid(csv_bytes(f"1,a,b,{A}", header="S. No.,Name,Product Name,Image URLs\n"))
    assert triples(exc) == [(1, NAME)]
    assert exc.errors[0].message == (
        'Columns B ("Name") and C ("Product Name") are both \'Product Name\'; keep only one.'
    )


def test_duplicate_header_column_with_bom_names_the_clean_header() -> None:
    exc = invalid(b"\xef\xbb\xbf" + csv_bytes(f"1,2,a,{A}", header="S. No.,Serial Number,Name,Images\n"))
    assert triples(exc) == [(1, SERIAL)]
    assert 'Columns A ("S. No.") and B ("Serial Number")' in exc.errors[0].message


def test_delimiter_tie_keeps_comma() -> None:
    # "," finds Name only, ";" finds Images only: a tie, so "," is used.
    exc = invalid(csv_bytes("x", header="Name,x;Images\n"))
    assert triples(exc) == [(1, SERIAL), (1, URLS)]


def test_several_errors_at_once_all_listed_in_order() -> None:
    data = csv_bytes(
        f"1,ok,{A}",
        f"1,,ftp://x.example/a,{B}",
        "",
        ",c,",
        f'4,d,"{A}, https://u@h.example/, {B}\nhttps://h.example\\a"',
    )
    exc = invalid(data)
    assert triples(exc) == [
        (3, None),  # extra cells
        (3, SERIAL),  # duplicate of row 2
        (3, NAME),
        (3, URLS),  # ftp
        (5, SERIAL),
        (5, URLS),  # no URL
        (6, URLS),  # credentials
        (6, URLS),  # backslash
    ]
    assert exc.total == 8
    assert exc.detail == "The CSV has 8 problems; the first 8 are listed."
    assert str(exc) == exc.detail


def test_error_cap_keeps_counting() -> None:
    data = csv_bytes(*(f"{i},,{A}" for i in range(1, 21)))
    exc = invalid(data, CsvLimits(max_errors=5))
    assert exc.errors == [RowError(row, NAME, "Product Name is empty.") for row in range(2, 7)]
    assert exc.total == 20
    assert exc.detail == "The CSV has 20 problems; the first 5 are listed."


def test_single_row_error_detail() -> None:
    assert invalid(csv_bytes("1,,https://a.example/")).detail == "The CSV has 1 problem; it is listed."


# File-level problems -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b" \r\n\r\n\t\n", "empty"),
        (csv_bytes(), "no product rows"),
        (csv_bytes("", ",,", " "), "no product rows"),
        (csv_bytes(f"1,a\x00b,{A}"), "NUL"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "not a text CSV file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "not a text CSV file"),
        (b"GIF89a\x01\x00\x01\x00\x80\x01\x00", "not a text CSV file"),
        (b"PK\x03\x04\x14\x00\x06\x00", "Excel workbook"),
        (HEADER.encode("utf-16"), "UTF-16"),
        (csv_bytes(f"1,a\x1bb,{A}"), "control characters"),
    ],
    ids=[
        "empty",
        "bom-only",
        "whitespace",
        "header-only",
        "header-blank-rows",
        "nul",
        "png",
        "jpeg",
        "gif",
        "xlsx",
        "utf16",
        "escape-char",
    ],
)
def test_file_level_errors(data: bytes, text: str) -> None:
    exc = invalid(data)
    assert triples(exc) == [(None, None)]
    assert text in exc.errors[0].message
    assert exc.total == 1
    assert exc.detail == exc.errors[0].message  # one file-level problem: the detail is the problem


def test_no_product_rows_message() -> None:
    assert invalid(csv_bytes()).detail == "The CSV has no product rows."


def test_binary_files_say_not_a_text_csv() -> None:
    for data in (b"\x89PNG\r\n\x1a\n\x00\x00", csv_bytes("1,a\x00,b")):
        assert "not a text CSV file" in invalid(data).detail


def test_huge_field_is_a_clean_error() -> None:
    huge = "x" * (FIELD_SIZE_LIMIT + 10)
    exc = invalid(csv_bytes(f"1,a,{A}", f"2,b,{A}", f'3,"{huge}",{A}', "4,,"))
    assert triples(exc) == [(4, None)]
    assert "larger than the limit of 1 MiB" in exc.errors[0].message


def test_unclosed_quote_swallowing_the_file_is_a_clean_error() -> None:
    exc = invalid(csv_bytes(f"1,a,{A}", f'2,"b,{A}', *(f"{i},n,{A}" for i in range(3, 50))))
    assert triples(exc) == [(3, None)]
    assert "never closed" in exc.errors[0].message


def test_text_after_closing_quote_is_a_clean_error_with_earlier_errors_kept() -> None:
    exc = invalid(csv_bytes("1,,https://a.example/", f'2,"b"x,{A}'))
    assert triples(exc) == [(2, NAME), (3, None)]
    assert "after a closing quote" in exc.errors[1].message


def test_unreadable_header_is_a_clean_error() -> None:
    exc = invalid(b'S. No.,"Product Name"x,Input Image Urls\n1,a,https://a.example/\n')
    assert triples(exc) == [(None, None)]
    assert "header row cannot be read" in exc.detail


# Size limit ----------------------------------------------------------------------------------


def test_too_large_bytes() -> None:
    data = csv_bytes(f"1,a,{A}")
    assert parse(data, limits=CsvLimits(max_bytes=len(data)))  # exactly the limit is fine
    with pytest.raises(CsvTooLarge) as info:
        parse(data, limits=CsvLimits(max_bytes=len(data) - 1))
    assert str(len(data) - 1) in str(info.value)


def test_too_large_message_names_the_limit() -> None:
    with pytest.raises(CsvTooLarge, match=r"20 MiB \(20971520 bytes\)"):
        parse(b"x" * (20 * 1024 * 1024 + 1))


class HugeUpload(io.RawIOBase):
    """A 2 GB upload that is never materialised; records how much was asked for."""

    def __init__(self, size: int = 2 * 1024**3, max_read: int | None = None) -> None:
        self.remaining = size
        self.requested = 0
        self.max_read = max_read

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("parse() must never read a whole upload")
        if self.max_read is not None:
            size = min(size, self.max_read)
        size = min(size, self.remaining)
        self.remaining -= size
        self.requested += size
        return b"a" * size


def test_too_large_file_object_is_not_slurped() -> None:
    upload = HugeUpload()
    with pytest.raises(CsvTooLarge):
        parse(upload, limits=CsvLimits(max_bytes=1000))  # type: ignore[arg-type]
    assert upload.requested == 1001


def test_too_large_file_object_with_short_reads() -> None:
    upload = HugeUpload(max_read=64)
    with pytest.raises(CsvTooLarge):
        parse(upload, limits=CsvLimits(max_bytes=1000))  # type: ignore[arg-type]
    assert upload.requested == 1001


def test_file_object_at_limit_and_one_over() -> None:
    data = csv_bytes(f"1,a,{A}")
    assert parse(io.BytesIO(data), limits=CsvLimits(max_bytes=len(data)))[0].urls == (A,)
    with pytest.raises(CsvTooLarge):
        parse(io.BytesIO(data + b"\n"), limits=CsvLimits(max_bytes=len(data)))


def test_file_object_with_short_reads_is_read_fully() -> None:
    data = csv_bytes(*(f"{i},n,{A}" for i in range(1, 40)))
    upload = io.BufferedReader(io.BytesIO(data), buffer_size=16)

    class Trickle(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int | None = -1) -> bytes:
            return upload.read1(min(size or 7, 7))

    assert len(parse(Trickle(), limits=CsvLimits(max_bytes=len(data)))) == 39  # type: ignore[arg-type]


def test_exceptions_pickle() -> None:
    exc = invalid(
        csv_bytes("1,,https://a.example/", "2,,https://a.example/"),
        CsvLimits(max_errors=1),
    )
    assert (len(exc.errors), exc.total) == (1, 2)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.errors, copy.total, copy.detail) == (exc.errors, exc.total, exc.detail)
    big = pickle.loads(pickle.dumps(CsvTooLarge(1024)))
    assert (big.max_bytes, str(big)) == (1024, str(CsvTooLarge(1024)))


def test_module_does_not_import_django() -> None:
    with open(csv_io.__file__, encoding="utf-8") as f:
        source = f.read()
    assert "django" not in source.lower().replace("no django import", "")


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "+1"),  # a plain number: stays numeric
        ("+1+2", "'+1+2"),
        ("-1+2", "'-1+2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("\nx", "'\nx"),
        ("-2", "-2"),
        ("-2.5", "-2.5"),
        ("+3.5", "+3.5"),
        ("-.5", "-.5"),
        ("-0.5e3", "'-0.5e3"),  # exponent forms are escaped (documented choice)
        ("-1,000", "'-1,000"),
        ("-", "'-"),
        ("--2", "'--2"),
        ("-2 ", "'-2 "),
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("  =1+1", "'  =1+1"),  # spreadsheets may trim leading spaces on import
        ("2", "2"),
        ("Café", "Café"),
        ("", ""),
        ("a=1", "a=1"),
        ("'=1", "'=1"),
        ("https://img.example.com/a.jpg", "https://img.example.com/a.jpg"),
    ],
)
def test_escape_cell(value: str, expected: str) -> None:
    assert escape_cell(value) == expected


RowIn = tuple[str, str, list[str], list[str | None]]


def test_render_output_round_trip() -> None:
    rows: list[RowIn] = [
        (
            "1",
            "Shirt",
            [A, B, C],
            ["https://out.example/1.jpg", None, "https://out.example/3.jpg"],
        ),
        ("=2+2", '@evil "quoted", name\nline 2', [A], [None]),
        (
            "-3",
            "-cmd|' /C calc'!A0",
            [B, A],
            ["https://out.example/x,y.jpg", "https://out.example/a.jpg"],
        ),
    ]
    text = "".join(render_output(rows))
    # CRLF after the header and each of the 3 rows; the one bare LF is inside the quoted name.
    assert text.endswith("\r\n") and text.count("\r\n") == 4 and text.count("\n") == 5
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed == [
        list(OUTPUT_HEADER),
        [
            "1",
            "Shirt",
            f"{A},{B},{C}",
            "https://out.example/1.jpg,,https://out.example/3.jpg",
        ],
        ["'=2+2", '\'@evil "quoted", name\nline 2', A, ""],
        [
            "-3",
            "'-cmd|' /C calc'!A0",
            f"{B},{A}",
            "https://out.example/x%2Cy.jpg,https://out.example/a.jpg",
        ],
    ]
    for _, _, inputs, outputs in parsed[1:]:
        assert len(inputs.split(",")) == len(outputs.split(","))  # positional alignment


def test_render_output_chunks() -> None:
    rows: list[RowIn] = [(str(i), "n", [A], [None]) for i in range(100)]
    chunks = list(render_output(rows))
    assert chunks[0] == "S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"
    assert len(chunks) == 101 and all(c.count("\r\n") == 1 for c in chunks)
    batched = list(render_output(iter(rows), min_chunk=1000))
    assert "".join(batched) == "".join(chunks)
    assert batched[0] == chunks[0]
    assert all(len(c) >= 1000 for c in batched[1:-1]) and all(c.endswith("\r\n") for c in batched)
    assert 2 < len(batched) < 10


def test_render_output_header_only_and_lazy() -> None:
    assert list(render_output([])) == ["S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"]

    def rows() -> Any:
        yield ("1", "a", [A], [None])
        raise AssertionError("consumed too eagerly")

    stream = render_output(rows())
    assert next(stream).startswith("S. No.")
    assert next(stream) == f"1,a,{A},\r\n"


def test_render_output_rejects_misaligned_rows() -> None:
    with pytest.raises(ValueError, match="aligned"):
        list(render_output([("1", "a", [A, B], [None])]))


def test_output_can_be_uploaded_again() -> None:
    rows: list[RowIn] = [
        ("1", "Café", [A, B], [None, "https://out.example/b.jpg"]),
        ("2", "b", [C], [None]),
    ]
    data = "".join(render_output(rows)).encode("utf-8")
    assert parse(data) == [
        ParsedRow(2, "1", "Café", (A, B)),
        ParsedRow(3, "2", "b", (C,)),
    ]


# ------------------------------------------------------------------------------------------
# The upload's layout: its columns and dialect, given back by the output
# ------------------------------------------------------------------------------------------


def test_a_tab_separated_file_is_read_like_a_comma_separated_one() -> None:
    data = csv_bytes(f"1\tShirt\t{A}, {B}", f"2\tHat\t{C}", header="S. No.\tProduct Name\tInput Image Urls\n")
    parsed = csv_io.open_csv(data)
    assert parsed.layout.dialect == csv_io.CsvDialect("utf-8", "\t")
    assert list(parsed.rows) == [ParsedRow(2, "1", "Shirt", (A, B)), ParsedRow(3, "2", "Hat", (C,))]


@pytest.mark.parametrize(
    ("encoding", "prefix", "delimiter", "found"),
    [
        ("utf-8", b"", ",", "utf-8"),
        ("utf-8", b"\xef\xbb\xbf", ";", "utf-8-sig"),
        ("cp1252", b"", ";", "cp1252"),
    ],
)
def test_the_layout_records_the_encoding_and_delimiter_found(
    encoding: str, prefix: bytes, delimiter: str, found: str
) -> None:
    header = delimiter.join(["Code", "S. No.", "Product Name", "Input Image Urls", "Prix €"]) + "\r\n"
    data = prefix + csv_bytes(delimiter.join(["x1", "1", "Café", A, "9.50"]), header=header, encoding=encoding)
    parsed = csv_io.open_csv(data)
    assert parsed.layout.header == ("Code", "S. No.", "Product Name", "Input Image Urls", "Prix €")
    assert parsed.layout.dialect == csv_io.CsvDialect(found, delimiter)
    assert [row.extra for row in parsed.rows] == [("x1", "9.50")]


def test_an_uploaded_output_column_and_trailing_empty_columns_are_dropped() -> None:
    header = "Code,S. No.,Product Name,Input Image Urls,Output Image Urls,,\r\n"
    parsed = csv_io.open_csv(csv_bytes(f"x1,1,Shirt,{A},https://old.example/a.jpg,,", header=header))
    assert parsed.layout.header == ("Code", "S. No.", "Product Name", "Input Image Urls")
    assert [row.extra for row in parsed.rows] == [("x1",)]


def test_the_output_keeps_every_input_column_in_its_place() -> None:
    header = ("Code", "image_urls", "Notes", "product_name", "", "serial_number", "=cmd")
    rows = [
        ("9", "Shirt", [A, B], [None, "https://out.example/b.jpg"], ("x1", "blue; cotton", "", "=2+2")),
        ("10", "Hat", [C], ["https://out.example/c.jpg"], ("x2",)),  # a short row: the rest empty
    ]
    text = "".join(render_output(rows, header=header, delimiter=";"))
    assert list(csv.reader(io.StringIO(text, newline=""), delimiter=";")) == [
        [*header[:6], "'=cmd", "Output Image Urls"],
        ["x1", f"{A},{B}", "blue; cotton", "Shirt", "", "9", "'=2+2", ",https://out.example/b.jpg"],
        ["x2", C, "", "Hat", "", "10", "", "https://out.example/c.jpg"],
    ]


def test_an_output_in_the_uploads_dialect_parses_back_to_the_same_layout() -> None:
    header = "Code;S. No.;Product Name;Input Image Urls\r\n"
    upload = b"\xef\xbb\xbf" + csv_bytes(f"x1;1;Café;{A}", header=header)
    parsed = csv_io.open_csv(upload)
    rows = [(r.serial_number, r.product_name, r.urls, [None], r.extra) for r in parsed.rows]
    layout = parsed.layout
    chunks = render_output(rows, header=layout.header, delimiter=layout.dialect.delimiter)
    data = b"".join(csv_io.encode_output(chunks, layout.dialect))
    assert data.startswith(b"\xef\xbb\xbfCode;S. No.;")
    again = csv_io.open_csv(data)
    assert again.layout.dialect == layout.dialect
    assert again.layout.header == layout.header  # its Output Image Urls column dropped
    assert [(r.serial_number, r.product_name, r.urls, r.extra) for r in again.rows] == [("1", "Café", (A,), ("x1",))]


def test_encode_output_in_cp1252_and_utf8() -> None:
    chunks = ["Café;1\r\n", "Thé;2\r\n"]
    assert b"".join(csv_io.encode_output(chunks, csv_io.CsvDialect("cp1252", ";"))) == "".join(chunks).encode("cp1252")
    assert b"".join(csv_io.encode_output(chunks)) == "".join(chunks).encode("utf-8")
    with_bom = b"".join(csv_io.encode_output(chunks, csv_io.CsvDialect("utf-8-sig", ";")))
    assert with_bom == b"\xef\xbb\xbf" + "".join(chunks).encode("utf-8")
    assert csv_io.CsvDialect("cp1252").charset == "windows-1252" and csv_io.STANDARD_DIALECT.charset == "utf-8"
