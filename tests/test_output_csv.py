"""The output CSV fits the shop's spreadsheet: every column of the upload comes back in its
place with `Output Image Urls` appended, in the upload's encoding and delimiter (or UTF-8
with commas on request); GET /csv/output, `process_csv --output` and the stored output CSV
are the same bytes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from requests_app.models import ProcessingRequest
from tests.conftest import ImageServer, make_image

pytestmark = pytest.mark.django_db(transaction=True)


def upload(api: APIClient, content: bytes) -> dict[str, Any]:
    data = {"file": io.BytesIO(content)}
    data["file"].name = "catalogue.csv"
    response = api.post("/csv/upload", data, format="multipart")
    assert response.status_code == 202, response.content
    body: dict[str, Any] = response.json()
    return body


def output(api: APIClient, request_id: str, **params: str) -> tuple[bytes, str]:
    response = api.get(f"/csv/output/{request_id}", params)
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content), response["Content-Type"]


def excel_csv(image_server: ImageServer) -> tuple[bytes, str, str]:
    """What Excel writes in a French locale: Windows-1252, semicolons, the shop's own
    columns around ours and in another order."""
    shoe = image_server.add("/shop/shoe.jpg", make_image(120, 90))
    missing = image_server.base_url + "/shop/missing.jpg"
    text = (
        "Référence;Input Image Urls;Prix €;Product Name;S. No.;Remarque\r\n"
        f"R-1;{shoe},{missing};12,50;Chaussure été;1;à vérifier\r\n"
        f"R-2;{shoe};9,90;Bonnet;2;\r\n"
    )
    return text.encode("cp1252"), shoe, missing


def test_the_output_keeps_every_column_in_the_uploads_order_and_dialect(
    api: APIClient, image_server: ImageServer
) -> None:
    content, shoe, missing = excel_csv(image_server)
    request_id = upload(api, content)["request_id"]
    request = ProcessingRequest.objects.get(pk=request_id)
    assert (request.csv_encoding, request.csv_delimiter) == ("cp1252", ";")

    data, content_type = output(api, request_id)
    assert content_type == "text/csv; charset=windows-1252"
    rows = list(csv.reader(io.StringIO(data.decode("cp1252"), newline=""), delimiter=";"))
    assert rows[0] == [
        "Référence",
        "Input Image Urls",
        "Prix €",
        "Product Name",
        "S. No.",
        "Remarque",
        "Output Image Urls",
    ]
    assert rows[1][:6] == ["R-1", f"{shoe},{missing}", "12,50", "Chaussure été", "1", "à vérifier"]
    shoe_out, missing_out = rows[1][6].split(",")
    assert shoe_out.endswith(".jpg") and missing_out == ""
    assert rows[2] == ["R-2", shoe, "9,90", "Bonnet", "2", "", shoe_out]

    # The standard dialect: the same table in UTF-8 without a byte-order mark, with commas.
    standard, standard_type = output(api, request_id, dialect="standard")
    assert standard_type == "text/csv; charset=utf-8"
    assert not standard.startswith(b"\xef\xbb\xbf")
    assert list(csv.reader(io.StringIO(standard.decode("utf-8"), newline=""))) == rows

    refused = api.get(f"/csv/output/{request_id}", {"dialect": "excel"})
    assert refused.status_code == 400 and "dialect" in refused.json()


def test_a_utf8_upload_with_a_byte_order_mark_comes_back_with_one(api: APIClient, image_server: ImageServer) -> None:
    url = image_server.add("/bom.jpg", make_image(40, 30))
    content = f"\ufeffS. No.,Product Name,Input Image Urls,Colour\r\n1,Café,{url},bleu\r\n".encode()
    request_id = upload(api, content)["request_id"]
    data, content_type = output(api, request_id)
    assert content_type == "text/csv; charset=utf-8"
    assert data.startswith(b"\xef\xbb\xbfS. No.,Product Name,Input Image Urls,Colour,Output Image Urls\r\n")
    assert data.decode("utf-8-sig").splitlines()[1].startswith(f"1,Café,{url},bleu,http")


def test_the_api_the_command_and_the_stored_csv_give_the_same_bytes(
    api: APIClient, image_server: ImageServer, tmp_path: Path
) -> None:
    content, _, _ = excel_csv(image_server)
    request_id = upload(api, content)["request_id"]
    request = ProcessingRequest.objects.get(pk=request_id)
    served, _ = output(api, request_id)
    with default_storage.open(request.output_csv_name) as stored:
        assert stored.read() == served

    source = tmp_path / "catalogue.csv"
    source.write_bytes(content)
    written = tmp_path / "out.csv"
    # One image is missing: the command says so with its exit status 2, after writing.
    with pytest.raises(CommandError) as failed:
        call_command("process_csv", str(source), "--output", str(written), "--owner", "acme", stdout=io.StringIO())
    assert failed.value.returncode == 2
    by_command = ProcessingRequest.objects.exclude(pk=request_id).get()
    served_again, _ = output(api, str(by_command.pk))
    assert written.read_bytes() == served_again
    with default_storage.open(by_command.output_csv_name) as stored:
        assert stored.read() == served_again
    # The same upload gives the same table, but for the output URLs' request folder.
    assert served_again.replace(str(by_command.pk).encode(), str(request_id).encode()) == served
