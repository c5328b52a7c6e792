"""Benchmarks: NLL, sampler accuracy and throughput; each writes JSON to benchmarks/results."""
