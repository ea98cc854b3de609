"""walletd benchmarks: ``python -m bench.run`` (``make bench``) and standalone scripts.

``bench.run`` measures, on one embedded PostgreSQL, the raw-SQL ceiling (pgbench),
walletd over HTTP against it, and the read paths of a wallet with a million entries.
docs/benchmarks.md explains what is measured and how to read ``results/latest.json``.
"""
