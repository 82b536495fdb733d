"""Domain errors that map onto RFC 9457 problem details.

Domain code raises these; the HTTP layer renders them. Each has a stable `type` slug that clients and the
lab's workload can branch on without parsing prose.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "https://smslab.dev/problems/"


class ProblemError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            problem["instance"] = instance
        problem.update(self.extra)
        return problem


class BadRequest(ProblemError):
    pass


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "Missing or invalid session token"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidInput(ProblemError):
    status = 422
    slug = "invalid-input"
    title = "Invalid input"


class InsufficientCredits(ProblemError):
    status = 402
    slug = "insufficient-credits"
    title = "Not enough credits"


class CampaignNotDraft(Conflict):
    slug = "campaign-not-draft"
    title = "Campaign is no longer a draft"


class CampaignNotCancellable(Conflict):
    slug = "campaign-not-cancellable"
    title = "Campaign has already finished"


class IdempotencyKeyInFlight(Conflict):
    slug = "idempotency-key-in-flight"
    title = "A request with this Idempotency-Key is still being processed"


class IdempotencyKeyReused(InvalidInput):
    slug = "idempotency-key-reused"
    title = "This Idempotency-Key was used with a different request"


class NoRecipients(InvalidInput):
    slug = "no-recipients"
    title = "Campaign has no consenting recipients"


def _problem_classes(base: type[ProblemError] = ProblemError) -> list[type[ProblemError]]:
    classes = []
    for sub in base.__subclasses__():
        classes.append(sub)
        classes.extend(_problem_classes(sub))
    return classes


def replayed_problem(problem: dict[str, Any]) -> ProblemError:
    """A refusal stored under an Idempotency-Key, raised again (as its own class) for a retry."""
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1] or "bad-request"
    status = int(problem.get("status", 400))
    kind = next(
        (c for c in _problem_classes() if c.slug == slug and c.status == status),
        None,
    )
    if kind is None:  # a refusal of a kind this version no longer has: same status, same body
        title = str(problem.get("title", ""))
        kind = type("ReplayedProblem", (ProblemError,), {"status": status, "slug": slug, "title": title})
    extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail", "instance")}
    return kind(str(problem.get("detail", "")), headers={"Idempotent-Replayed": "true"}, **extra)
