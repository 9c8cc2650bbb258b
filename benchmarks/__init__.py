"""pytest-benchmark suites for mesrgan (``pytest benchmarks --benchmark-only``) and their report.

See docs/benchmarks.md for how to run them and what the numbers mean.
"""
