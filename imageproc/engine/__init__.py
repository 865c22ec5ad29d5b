"""The engine: everything that touches bytes from outside, without Django.

Fetching (with its address policy), compressing, naming outputs, reading and writing the
CSV, and signing webhooks. Nothing here imports Django or any other part of the project
(an import-linter contract in `make lint` holds it to that): callers pass in settings as
plain values, so each piece can be tested and reasoned about on its own.
"""
