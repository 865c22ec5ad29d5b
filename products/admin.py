"""Products and images in the admin: read-only, for finding one across requests. A request's
own page (requests_app.admin) is where its products are normally looked at."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from imageproc.storage import output_url as storage_url
from products.models import ImageStatus, Product, ProductImage
from requests_app.admin.display import TIMES, NoAddOrChange, image_size, input_preview_allowed, status_badge, thumbnail
from requests_app.formatting import NOTHING

if TYPE_CHECKING:
    # Generic in django-stubs only; subscripting them at runtime would need django-stubs-ext.
    ModelAdminBase = admin.ModelAdmin[Any]
    ImageInlineBase = admin.TabularInline[ProductImage, Product]
else:
    ModelAdminBase = admin.ModelAdmin
    ImageInlineBase = admin.TabularInline


class ReadOnlyAdmin(NoAddOrChange, ModelAdminBase):
    """Rows written by the pipeline only: changing one here would put its request's counters
    out of step with its images."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def request_link(request_id: Any) -> SafeString:
    url = reverse("admin:requests_app_processingrequest_change", args=[request_id])
    return format_html('<a href="{}"><code class="ip-id">{}</code></a>', url, str(request_id)[:8])


def _uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


class ImageCells:
    """The columns that show one image, in the inline and in the images list alike."""

    @admin.display(description="Input")
    def input(self, obj: ProductImage) -> SafeString:
        return thumbnail(obj.source_url, referrer=False, preview=input_preview_allowed(obj))

    @admin.display(description="Output")
    def output(self, obj: ProductImage) -> SafeString | str:
        if obj.status != ImageStatus.DONE or not obj.output_name:
            return NOTHING
        return thumbnail(storage_url(obj.output_name), referrer=True)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ProductImage) -> SafeString:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Size")
    def size(self, obj: ProductImage) -> str:
        return image_size(obj)

    @admin.display(description="Compression")
    def compression(self, obj: ProductImage) -> str:
        """What the engine made of it: format, the candidate kept, the quality chosen and
        the score reached (an automatic quality)."""
        if not obj.candidate:
            return NOTHING
        parts = [obj.output_format.upper(), obj.candidate]
        if obj.quality_chosen is not None:
            parts.append(f"quality {obj.quality_chosen}")
        if obj.score is not None:
            parts.append(f"score {obj.score:.1f}")
        return " · ".join(parts)


class ImageInline(ImageCells, NoAddOrChange, ImageInlineBase):
    model = ProductImage
    extra = 0
    can_delete = False
    fields = readonly_fields = ("position", "input", "output", "status_badge", "size", "compression", "error")
    ordering = ("position",)

    @admin.display(description="Error")
    def error(self, obj: ProductImage) -> str:
        return f"{obj.error_code}: {obj.error_message}" if obj.error_code else ""


@admin.register(Product)
class ProductAdmin(ReadOnlyAdmin):
    list_display = ("serial_number", "product_name", "request", "row")
    search_fields = ("serial_number", "product_name")
    search_help_text = "A request id (the whole UUID), or part of a serial number or product name."
    # By the columns themselves: ordering by the `request` relation would sort by the
    # request's own ordering, a join and a sort over every product.
    ordering = ("request_id", "position")
    show_full_result_count = False
    inlines = (ImageInline,)
    fields = ("request", "row", "serial_number", "product_name")
    readonly_fields = fields

    @admin.display(description="Request")
    def request(self, obj: Product) -> SafeString:
        return request_link(obj.request_id)

    @admin.display(description="Row", ordering="position")
    def row(self, obj: Product) -> int:
        return obj.position + 2  # the spreadsheet's row: the header is row 1

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # UUIDs match exactly (MongoDB cannot run pattern lookups on them).
        request_id = _uuid(search_term)
        if request_id:
            return queryset.filter(request_id=request_id), False
        return super().get_search_results(request, queryset, search_term)


class HasErrorFilter(admin.SimpleListFilter):
    title = "error"
    parameter_name = "error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # A fixed list rather than a DISTINCT over every image.
        codes = ("http_404", "timeout", "too_large", "not_an_image", "blocked_address", "decode_error")
        return [(code, code) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(error_code=self.value()) if self.value() else queryset


@admin.register(ProductImage)
class ProductImageAdmin(ImageCells, ReadOnlyAdmin):
    list_display = (
        "input",
        "output",
        "status_badge",
        "request",
        "dimensions",
        "size",
        "compression",
        "error_code",
        "attempts",
    )
    list_filter = ("status", HasErrorFilter)
    search_fields = ("source_url",)
    search_help_text = "A request or product id (the whole UUID), or part of an image URL."
    ordering = ("product_id", "position")  # an index, not the product's ordering (a join)
    show_full_result_count = False
    list_per_page = 50
    fields = (
        "request",
        "product",
        "position",
        "source_url",
        "status",
        "attempts",
        "error_code",
        "error_message",
        "output_name",
        "kept_original",
        "bytes_in",
        "bytes_out",
        "width",
        "height",
        "input_format",
        "output_format",
        "candidate",
        "quality_chosen",
        "score",
        "encoder",
        "fetch_ms",
        "compress_ms",
        "store_ms",
        "claimed_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="Request")
    def request(self, obj: ProductImage) -> SafeString:
        return request_link(obj.request_id)

    @admin.display(description="Pixels")
    def dimensions(self, obj: ProductImage) -> str:
        return f"{obj.width}{TIMES}{obj.height} {obj.input_format}" if obj.width else NOTHING

    @admin.display(description="Bytes")
    def size(self, obj: ProductImage) -> str:
        return super().size(obj)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        some_id = _uuid(search_term)
        if some_id:
            return queryset.filter(Q(request_id=some_id) | Q(product_id=some_id) | Q(pk=some_id)), False
        return super().get_search_results(request, queryset, search_term)
