"""Helpers shared by the test suites (builders of synthetic files; no tests here)."""
