"""Benchmark scripts (run as files: python benchmarks/NAME.py); a package so their shared helpers import
as benchmarks.timing ahead of any other top-level `benchmarks` an environment may hold."""
