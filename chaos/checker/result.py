"""A checker's verdict on one invariant, and how verdicts compose."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Validity = bool | Literal["unknown"]
MAX_WITNESSES = 20


@dataclass
class CheckResult:
    id: str
    title: str
    valid: Validity
    counts: dict[str, int] = field(default_factory=dict)
    witnesses: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    def witness(self, row: dict[str, Any], displaces: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Keep the first witnesses only; the counts say how many there were. A row that must be seen
        takes, once the list is full, the place of the last witness `displaces` says matters less."""
        if len(self.witnesses) < MAX_WITNESSES:
            self.witnesses.append(row)
        elif displaces is not None:
            lesser = [index for index, kept in enumerate(self.witnesses) if displaces(kept)]
            if lesser:
                self.witnesses[lesser[-1]] = row

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "valid": self.valid,
            "counts": self.counts,
            "witnesses": self.witnesses,
        }
        if self.note:
            data["note"] = self.note
        return data


def compose(results: Iterable[CheckResult]) -> Validity:
    """False beats unknown beats true."""
    values = [r.valid for r in results]
    if any(v is False for v in values):
        return False
    if any(v == "unknown" for v in values):
        return "unknown"
    return True


def guarded(invariant_id: str, title: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; if it throws, the verdict is unknown (never valid) and says why."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a crashed checker must not look like a pass
        return CheckResult(
            invariant_id, title, "unknown", note=f"checker failed: {type(exc).__name__}: {exc}"
        )
