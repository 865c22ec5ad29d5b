"""The HTTP API for clients: DRF viewsets, their serializers, and one exception handler."""
