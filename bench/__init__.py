"""Benchmarks (`make bench`): never part of the test suite, never pass/fail on timing."""
