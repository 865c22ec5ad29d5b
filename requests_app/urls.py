from __future__ import annotations

from django.urls import re_path

from requests_app.api.views import ProcessingRequestViewSet

# The client's paths, each with and without a trailing slash. Any id segment reaches the view,
# which answers a JSON 404 for one that is not a UUID of this client's: a narrower pattern
# here made Django answer its HTML 404 page instead (found by schemathesis).
ID = r"(?P<pk>[^/]+)"

urlpatterns = [
    re_path(r"^csv/upload/?$", ProcessingRequestViewSet.as_view({"post": "upload"}), name="csv-upload"),
    re_path(rf"^csv/status/{ID}/?$", ProcessingRequestViewSet.as_view({"get": "status"}), name="csv-status"),
    re_path(rf"^csv/output/{ID}/?$", ProcessingRequestViewSet.as_view({"get": "output"}), name="csv-output"),
    re_path(r"^csv/requests/?$", ProcessingRequestViewSet.as_view({"get": "list"}), name="csv-requests"),
    re_path(rf"^csv/requests/{ID}/retry/?$", ProcessingRequestViewSet.as_view({"post": "retry"}), name="csv-retry"),
    re_path(
        rf"^csv/requests/{ID}/webhook/resend/?$",
        ProcessingRequestViewSet.as_view({"post": "webhook_resend"}),
        name="csv-webhook-resend",
    ),
]
