"""Test support code: fixtures and helpers shared by the test suites."""
