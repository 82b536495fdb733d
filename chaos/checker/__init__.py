"""The checker: invariants I1-I9 proven from ground truth (the simulator's ledgers) and the database.

Each invariant has its own module with a `check(...) -> CheckResult`. A result is valid True, False or
"unknown" (Jepsen's convention: composed with false over unknown over true; a checker that throws yields
unknown, never true), with counts and the first witness rows of any violation.
"""
