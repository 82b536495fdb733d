"""Campaigns: drafts, the idempotent enqueue, progress and completion."""
