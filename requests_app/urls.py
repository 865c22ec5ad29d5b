from __future__ import annotations

from typing import Any

from django.urls import re_path

from requests_app.api.views import ProcessingRequestViewSet

# The client's paths, each with and without a trailing slash. Any id segment reaches the view,
# which answers a JSON 404 for one that is not a UUID of this client's: a narrower pattern
# here made Django answer its HTML 404 page instead (found by schemathesis).
ID = r"(?P<pk>[^/]+)"


def endpoint(actions: dict[str, Any], title: str) -> Any:
    """The viewset's view for `actions`, with its own title in the browsable API and the
    action's docstring as its description (without them every page says "Processing Request")."""
    action = next(iter(actions.values()))
    description = getattr(ProcessingRequestViewSet, action).__doc__ or ""
    return ProcessingRequestViewSet.as_view(actions, name=title, description=description)


urlpatterns = [
    # GET shows the browsable API's upload form (a JSON client still gets 405).
    re_path(r"^csv/upload/?$", endpoint({"post": "upload", "get": "upload_form"}, "Upload a CSV"), name="csv-upload"),
    re_path(rf"^csv/status/{ID}/?$", endpoint({"get": "status"}, "Request status"), name="csv-status"),
    re_path(rf"^csv/output/{ID}/?$", endpoint({"get": "output"}, "Output CSV"), name="csv-output"),
    re_path(r"^csv/requests/?$", endpoint({"get": "list"}, "Your requests"), name="csv-requests"),
    re_path(rf"^csv/requests/{ID}/retry/?$", endpoint({"post": "retry"}, "Retry failed images"), name="csv-retry"),
    re_path(
        rf"^csv/requests/{ID}/webhook/resend/?$",
        endpoint({"post": "webhook_resend"}, "Resend the webhook"),
        name="csv-webhook-resend",
    ),
]
