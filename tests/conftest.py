"""Shared pytest configuration: the dev-stack service fixtures (devstack/pytest_plugin.py) and the
fixtures that run central for real (tests/central_fixtures.py)."""

pytest_plugins = ["devstack.pytest_plugin", "tests.central_fixtures"]
