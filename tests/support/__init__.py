"""Helpers shared by the tests (fixtures, data builders, local stand-ins); no tests here.

``spark_fixtures`` is a pytest plugin (loaded from ``tests/conftest.py``); the
others are imported by the test modules that need them.
"""
