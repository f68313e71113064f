"""Benchmarks: datasets, baselines, the evaluation protocol, and the scripts that produce the result tables."""
