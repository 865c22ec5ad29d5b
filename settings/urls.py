from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from django.views.generic import TemplateView
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from imageproc.health import health

urlpatterns = [
    # The front page: what the service is, and links to the API docs, the admin and health
    # (also where the admin's "View site" goes).
    path("", TemplateView.as_view(template_name="landing.html"), name="home"),
    path("admin/", admin.site.urls),
    path("", include("requests_app.urls")),
    # GET and HEAD only, as /api/schema/ documents it: any other method answers 405 (not the
    # CSRF check's 403: it only reads, like the DRF views, which are exempt too).
    path("health/", csrf_exempt(require_safe(health)), name="health"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api-auth/", include("rest_framework.urls")),
]

if not settings.S3_BUCKET:
    # Local storage: the web server hands out the outputs itself (one machine only;
    # at scale, outputs live in S3 and this route does not exist).
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT})]
