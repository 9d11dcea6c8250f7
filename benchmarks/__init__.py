"""Benchmarks: side-by-side measurements with ratios (python -m benchmarks)."""
