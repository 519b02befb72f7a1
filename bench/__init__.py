"""Benchmarks printed as tables by ``python -m bench`` (``make bench``)."""
