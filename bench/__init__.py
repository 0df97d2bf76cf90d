"""Benchmarks: one harness (bench/harness.py) and one short spec per benchmark; see bench/README.md."""
