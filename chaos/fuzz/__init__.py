"""`smslab fuzz`: schemathesis against the live API, as a maintained fuzzer keeps the service honest."""
