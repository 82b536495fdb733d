"""Schemathesis extension hooks for `smslab fuzz` (loaded through `SCHEMATHESIS_HOOKS`).

- A session token minted afresh for every minute of the run, as App Bridge hands them out: the API refuses
  long-lived tokens, so a fixed `-H Authorization` header would expire during a long fuzz.
- With `SMSLAB_FUZZ_WEBHOOKS=1`: the check `answers_4xx`, for the webhooks run, where no request carries a
  valid signature: every answer must be a 4xx, never a 2xx (taking effect unsigned) nor a 5xx.

This module is imported by the schemathesis process only; it reads the app's key and secret from the
environment the lab gives that process.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from service.auth import issue_session_token
from service.settings import load_settings

FUZZ_SHOP = os.environ.get("SMSLAB_FUZZ_SHOP", "fuzz.myshopify.com")


WEBHOOKS = os.environ.get("SMSLAB_FUZZ_WEBHOOKS") == "1"


def _service_environment() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k.startswith("SMSLAB_") and not k.startswith("SMSLAB_FUZZ")
    }


if not WEBHOOKS:

    @schemathesis.auth(refresh_interval=30)
    class FreshSessionToken:
        def get(self, case: Any, context: Any) -> str:
            return issue_session_token(load_settings(_service_environment()), FUZZ_SHOP)

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = case.headers or {}
            case.headers["Authorization"] = f"Bearer {data}"

else:

    @schemathesis.check
    def answers_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
        """An unsigned (or wrongly signed) provider delivery is refused: 4xx, and only 4xx. (The probes
        of other methods, OPTIONS and the like, are the other checks' business.)"""
        if case.method.upper() == "POST" and not 400 <= response.status_code < 500:
            raise AssertionError(
                f"{case.method} {case.path} answered {response.status_code} to a delivery without a valid "
                "signature; every answer must be a 4xx"
            )
        return None
