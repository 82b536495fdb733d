"""Credits: an append-only ledger, a running wallet, and per-campaign reservations."""
