"""Pure rules of the ledger: amounts, currencies, postings, limits, hashes. No I/O."""
