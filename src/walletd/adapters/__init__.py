"""Adapters to the outside: PostgreSQL, Redis, Kafka, and the embedded servers."""
