"""The HTTP API for clients.

views        the viewset: parse with a serializer, call one service or selector, render
serializers  what it reads and what it answers (the OpenAPI schema comes from the same classes)
errors       the one exception handler: domain errors as HTTP answers
schema       what /api/schema/ documents beyond the serializers
auth, pagination, throttling
"""
