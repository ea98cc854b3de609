"""The bank workload under faults: ``python -m tests.chaos.run`` (``make chaos``).

Concurrent clients move money between wallets while worker, relay, PostgreSQL, Redis
and broker faults are injected; afterwards money, idempotency, the audit and the
events are checked. See docs/chaos.md.
"""
