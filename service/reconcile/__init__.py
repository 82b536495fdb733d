"""Reconciliation: the pass that heals lost jobs, expired claims and stale reservations."""
