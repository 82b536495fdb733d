"""Locust users and shapes for `smslab load` (docs/load.md)."""
