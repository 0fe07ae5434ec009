"""Benchmarks that print figures (see docs/BENCHMARKS.md). Run ``bench/run_all.py``."""
