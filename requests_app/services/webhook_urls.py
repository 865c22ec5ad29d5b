"""Where webhooks may go: the URL check at save time, and the policy every delivery runs under.

The address rules are the engine's (imageproc.engine.http: validate the URL, resolve the host
once within a deadline, refuse unless every address is allowed); this module adds the one
rule of its own: plain http only to hosts inside FETCH_ALLOWED_NETWORKS (local use).
"""

from __future__ import annotations

from django.conf import settings

from imageproc.engine import http
from requests_app.services.errors import ServiceError


class WebhookUrlInvalid(ServiceError):
    status_code = 400
    code = "invalid_webhook_url"

    def __init__(self, message: str, *, reason: str = "invalid_url") -> None:
        super().__init__(message)
        # Like http.FetchError.code: invalid_url, blocked_address, https_required, dns_error.
        self.reason = reason


def webhook_policy() -> http.FetchPolicy:
    """Built per call (it is cheap) so that settings overrides apply at once."""
    timeout = float(settings.WEBHOOK_TIMEOUT)
    return http.FetchPolicy(
        allowed_networks=http.parse_networks(settings.FETCH_ALLOWED_NETWORKS),
        connect_timeout=min(5.0, timeout),
        total_timeout=timeout,
        max_redirects=0,
        user_agent=settings.WEBHOOK_USER_AGENT,
    )


def webhook_url_check(url: str) -> str:
    """Return the URL if deliveries may go there; raise WebhookUrlInvalid otherwise.

    Refused: anything http.validate_url refuses (other schemes, credentials, odd hosts), a
    host that resolves to any private, loopback, link-local or reserved address outside
    FETCH_ALLOWED_NETWORKS, and plain http unless every address is in FETCH_ALLOWED_NETWORKS
    (local use). Called when a URL is saved; http.post applies the address guard again at
    every send, since DNS answers change.
    """
    policy = webhook_policy()
    target: http.Target | None = None
    try:
        target = http.parse_target(url)
        addresses = http.resolve_allowed(
            target.host, target.port, allowed_networks=policy.allowed_networks, timeout=policy.total_timeout
        )
    except http.FetchError as exc:
        raise _refused(target.host if target else "", exc) from None
    if target.scheme != "https" and not all(http.is_exempt(a, policy.allowed_networks) for a in addresses):
        raise WebhookUrlInvalid("Webhook URLs must use https.", reason="https_required")
    return url


def _refused(host: str, exc: http.FetchError) -> WebhookUrlInvalid:
    if exc.code == "blocked_address":
        return WebhookUrlInvalid(
            f"The host {host!r} resolves to a private, loopback or reserved address; webhooks are not sent there.",
            reason="blocked_address",
        )
    if exc.code == "timeout":
        return WebhookUrlInvalid(f"The host {host!r} did not resolve in time.", reason="dns_error")
    if exc.code == "dns_error":
        return WebhookUrlInvalid(f"The host {host!r} does not resolve.", reason="dns_error")
    return WebhookUrlInvalid(exc.message, reason="invalid_url")
