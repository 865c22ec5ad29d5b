"""The pipeline: what the workers do with a request once it is stored.

dispatch (queue batches) → process (claim, fetch, compress, store, record) → finalise (the
output CSV, the final status, the completion webhook); the sweeper brings back whatever a
crash or a lost task left behind. It sits above the services and models and below the
interfaces (API, admin, commands, task entry points).
"""
