"""The floor for upload ingest: a direct `bulk_create` of the rows of a CSV, through the
ORM, in one transaction, as request_create stores them. Run in its own process by
bench/run.py with the service's environment: `python -m bench.direct_ingest FILE.csv`.

Prints the seconds spent building the model objects and inserting them (the CSV is read
beforehand, untimed), as JSON.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
import uuid


def main(path: str) -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from products.models import Product, ProductImage
    from requests_app.models import ProcessingRequest

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        rows = [(serial, name, [u.strip() for u in urls.split(",")]) for serial, name, urls in reader]
    keys = {url: hashlib.sha256(url.encode()).hexdigest() for _, _, urls in rows for url in urls}
    owner, _ = get_user_model().objects.get_or_create(username="bench-direct")

    start = time.perf_counter()
    request = ProcessingRequest(
        owner=owner, products_total=len(rows), images_total=sum(len(urls) for _, _, urls in rows)
    )
    products = []
    images = []
    for position, (serial, name, urls) in enumerate(rows):
        product = Product(id=uuid.uuid4(), request=request, position=position, serial_number=serial, product_name=name)
        products.append(product)
        for index, url in enumerate(urls):
            images.append(
                ProductImage(
                    id=uuid.uuid4(),
                    request=request,
                    product=product,
                    position=index,
                    source_url=url,
                    source_key=keys[url],
                )
            )
    with transaction.atomic():
        request.save(force_insert=True)
        Product.objects.bulk_create(products, batch_size=2000)
        ProductImage.objects.bulk_create(images, batch_size=2000)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "products": len(products), "images": len(images)}))


if __name__ == "__main__":
    main(sys.argv[1])
