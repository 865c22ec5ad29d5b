"""How the admin shows things: badges, progress bars, thumbnails, sizes and savings. Shared by
the requests_app admins and products/admin.py; nothing here reads the database."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from products.models import ImageStatus, ProductImage
from requests_app.formatting import NOTHING, human_bytes
from requests_app.models import ProcessingRequest

TIMES = "\N{MULTIPLICATION SIGN}"


class NoAddOrChange:
    """For admins of rows that only the pipeline or a service writes (images, keys, webhook
    deliveries): they are shown, never added or edited by hand. Works for inlines too."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def saving_percent(bytes_in: int | None, bytes_out: int | None) -> float | None:
    """How much smaller the output is, in percent to one decimal; None before there is one."""
    if not bytes_in or bytes_out is None:
        return None
    return round(100 * (1 - bytes_out / bytes_in), 1)


def size_change(bytes_in: int | None, bytes_out: int | None, *, absolute: bool = False) -> SafeString:
    """The output against the input, as it is: `saved 38%` (green) when smaller, `+38% larger`
    (red, a warning) when larger, `same size` when neither; with `absolute`, the bytes too.
    A larger output is never shown as a saving (the engine keeps the input's own encoding
    rather than store a larger one, but counters may say otherwise)."""
    if not bytes_in or bytes_out is None:
        return format_html("{}", NOTHING)
    if bytes_out > bytes_in:
        grown = round(100 * (bytes_out / bytes_in - 1), 1)
        return format_html(
            '<span class="ip-larger" title="The output is larger than its input">{}+{}% larger</span>',
            f"+{human_bytes(bytes_out - bytes_in)}, " if absolute else "",
            grown,
        )
    if bytes_out == bytes_in:
        return format_html('<span class="ip-quiet">same size</span>')
    return format_html(
        '<span class="ip-saving">saved {}{}%</span>',
        f"{human_bytes(bytes_in - bytes_out)}, " if absolute else "",
        saving_percent(bytes_in, bytes_out),
    )


def status_badge(status: str, label: str) -> SafeString:
    return format_html('<span class="ip-badge ip-badge--{}">{}</span>', status, label)


def progress_bar(obj: ProcessingRequest) -> SafeString:
    """Done (green) and failed (red) segments of the total, from the request's counters."""
    total = obj.images_total or 1
    done = 100 * obj.images_done / total
    failed = 100 * obj.images_failed / total
    failed_text = format_html(' · <span class="ip-failed-text">{} failed</span>', obj.images_failed)
    return format_html(
        '<div class="ip-progress" title="{} done, {} failed, {} images">'
        '<div class="ip-progress__bar"><span class="ip-progress__done" style="width:{}%"></span>'
        '<span class="ip-progress__failed" style="width:{}%"></span></div>'
        '<div class="ip-progress__text">{}/{}{}</div></div>',
        obj.images_done,
        obj.images_failed,
        obj.images_total,
        f"{done:.2f}",
        f"{failed:.2f}",
        obj.images_finished,
        obj.images_total,
        failed_text if obj.images_failed else "",
    )


# --- Images --------------------------------------------------------------------------------


def http_url(url: str) -> str:
    # Source URLs were validated at upload (http/https only); this keeps any other scheme
    # out of an href even if a row was written some other way.
    return url if url.startswith(("http://", "https://")) else ""


def input_preview_allowed(image: ProductImage) -> bool:
    """Whether the staff's browser may load an image's input URL: only once the service has
    fetched it. Before that, or after a failure, it may be an address the fetch guard refuses
    (on the staff's own network, a cloud metadata service): linked, never loaded."""
    return image.status == ImageStatus.DONE


def thumbnail(url: str, *, referrer: bool, preview: bool = True) -> SafeString:
    """A thumbnail that links to the image. Inputs are the client's URLs: loaded without a
    referrer, so the client's server learns nothing about the admin. Without `preview`,
    only the link (input_preview_allowed)."""
    if not url.startswith(("http://", "https://", "/")):
        return format_html("{}", NOTHING)
    image = format_html(
        '<img src="{}" alt="" loading="lazy" referrerpolicy="{}" onerror="this.hidden=true">',
        url,
        "strict-origin-when-cross-origin" if referrer else "no-referrer",
    )
    return format_html(
        '<a class="ip-thumb" href="{}" target="_blank" rel="noopener noreferrer">{}<span>no preview</span></a>',
        url,
        image if preview else "",
    )


def image_size(image: ProductImage) -> str | SafeString:
    """Input → output bytes and the change (size_change), in one line."""
    if image.bytes_in is None:
        return NOTHING
    sizes = f"{human_bytes(image.bytes_in)} → {human_bytes(image.bytes_out)}"
    if image.bytes_out is None:
        return sizes
    return format_html("{} ({})", sizes, size_change(image.bytes_in, image.bytes_out))


class ImageView:
    """One image card of the request page (image_card.html), from an image the selectors
    read (with its `output_url`)."""

    def __init__(self, image: ProductImage) -> None:
        self.image = image
        self.output_url = image.output_url

    @property
    def input_url(self) -> str:
        return http_url(self.image.source_url)

    @property
    def input_preview(self) -> bool:
        return input_preview_allowed(self.image)

    @property
    def saving(self) -> float | None:
        return saving_percent(self.image.bytes_in, self.image.bytes_out)

    @property
    def size_change(self) -> SafeString | None:
        if self.image.bytes_in is None or self.image.bytes_out is None:
            return None
        return size_change(self.image.bytes_in, self.image.bytes_out)

    @property
    def bytes_in(self) -> str:
        return human_bytes(self.image.bytes_in)

    @property
    def bytes_out(self) -> str:
        return human_bytes(self.image.bytes_out)

    @property
    def renditions(self) -> list[dict[str, Any]]:
        """A request with sizes: one thumbnail per size, largest first (the selectors read them)."""
        return [
            {
                "size": output.size,
                "url": output.url,
                "width": output.width,
                "height": output.height,
                "bytes": human_bytes(output.bytes),
                "format": output.format,
            }
            for output in self.image.sized_outputs or ()
        ]
