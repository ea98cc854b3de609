"""walletd."""
