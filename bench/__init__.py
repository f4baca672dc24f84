"""Benchmarks: each prints figures, one JSON object on its last line."""
