"""Staff access to the client API's answers: the status JSON and output CSV of any request,
behind the admin's login (the client API answers 404 to anyone but the owner)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from requests_app.api.views import ProcessingRequestViewSet
from requests_app.models import ProcessingRequest

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from rest_framework.views import APIView


class CanViewRequests(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm("requests_app.view_processingrequest"))


class StaffRequestViewSet(ProcessingRequestViewSet):
    """The status JSON and output CSV of any request, for staff. The same code as the client
    API answers with; only the queryset is not limited to one owner. The status answer's page
    links are built from the current request (ProcessingRequestViewSet.page_url), so they
    point here, not at the client API (which answers 404 to staff who do not own it)."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [CanViewRequests]

    def get_queryset(self) -> QuerySet[ProcessingRequest]:
        return ProcessingRequest.objects.order_by("-created_at")

    def get_throttles(self) -> list[Any]:
        return []
