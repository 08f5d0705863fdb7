"""Benchmarks for keras-aswa: data loaders, models and quality runs.

Not part of the installed package; run from a checkout of the repository.
"""
