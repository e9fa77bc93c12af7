"""Benchmarks: loader against a naive baseline. Never run as tests (see README.md)."""
