"""Sending: claim recipients, call Mitto with a reference per message, record and debit once."""
