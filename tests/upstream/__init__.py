"""Harness that runs upstream test suites with taskiq-batching active."""
