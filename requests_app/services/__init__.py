"""Services: one function per use case (`<entity>_<action>`, keyword-only), called from the
API, the admin and the management commands alike. Rules live here, not in the callers."""
