"""walletd tests."""
