"""The test suite's shared helpers (servers, fakes, the parity references), imported as `from support.x import y`:
tests/ is on sys.path through pyproject.toml's `pythonpath`, and tests/test_layout.py states the rules."""
