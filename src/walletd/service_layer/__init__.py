"""Use cases: each one runs in one unit of work and returns domain records."""
