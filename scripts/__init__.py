"""Install, build and test helpers; `wheel` is importable by the tests."""
