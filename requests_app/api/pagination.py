"""Page numbers and the links between pages."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from imageproc.storage import absolute_url

PAGE_PARAM = "page"


def page_url(request: Request, page: int) -> str:
    """The URL of the current request at another page: its own path and query with `page`
    replaced, on PUBLIC_BASE_URL like every link the service hands out (the Host header may
    be a proxy's upstream address). A view mounted elsewhere (the staff's, under /admin/)
    links to itself."""
    query = request.query_params.copy()
    query[PAGE_PARAM] = str(page)
    return f"{absolute_url(request.path)}?{query.urlencode()}"


class StrictPageNumberPagination(PageNumberPagination):
    """`?page=` must be a page number: DRF would read an empty or missing value as page 1,
    which is fine when the parameter is absent but hides a client's bug when it is empty.
    Its next/previous links are page_url's."""

    page_query_param = PAGE_PARAM

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        value = request.query_params.get(self.page_query_param)
        if value is None:
            return 1
        return value  # Paginator.validate_number refuses "" and non-numbers: 404 Invalid page.

    def get_next_link(self) -> str | None:
        if self.page is None or self.request is None or not self.page.has_next():
            return None
        return page_url(self.request, self.page.next_page_number())

    def get_previous_link(self) -> str | None:
        if self.page is None or self.request is None or not self.page.has_previous():
            return None
        return page_url(self.request, self.page.previous_page_number())
