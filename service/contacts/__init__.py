"""Contacts: a shop's customers with their phone numbers and SMS consent."""
