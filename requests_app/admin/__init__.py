"""The Django admin: requests, API clients and their keys, webhook deliveries (one module a
family; products/admin.py borrows display.py). Importing the modules registers their admins."""

from django.contrib import admin

from requests_app.admin import clients, deliveries, requests  # noqa: F401  (they register the ModelAdmins)

admin.site.site_header = "Image processing"
admin.site.site_title = "Image processing admin"
admin.site.index_title = "Run the service"
# The request list and page need the width more than a second menu (the header has shortcuts).
admin.site.enable_nav_sidebar = False
