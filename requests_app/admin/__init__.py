"""The Django admin of requests, API clients and webhook deliveries (one module a family)."""

from requests_app.admin import registered  # noqa: F401  (registers the ModelAdmins)
