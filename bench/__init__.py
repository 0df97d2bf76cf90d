"""Benchmarks of the data path (ingest, sampler, memory); run `python -m bench.run_all`. See BENCHMARKS.md."""
