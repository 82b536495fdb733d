"""Provider webhooks: verified, replay-protected, applied exactly once (safeguards 6 and 7)."""
