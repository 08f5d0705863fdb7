"""Tests of the benchmarks, beside the code they test."""
