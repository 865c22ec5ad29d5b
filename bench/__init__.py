"""The benchmark (not a test): `python -m bench.run [--quick]`, see bench/run.py."""
