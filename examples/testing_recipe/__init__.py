"""The unit-test recipe of docs/testing.md, run by tests/test_examples.py."""
