"""Admission control (service/admission.py): a full API process answers 503 overloaded with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.admission import AdmissionControl
from tests.support.api import Api, problem, start_api
from tests.support.lab import Lab


# --- the slots and the line -----------------------------------------------------------------------------
async def test_a_free_slot_is_taken_at_once_and_a_full_process_refuses_after_the_wait() -> None:
    control = AdmissionControl(max_in_flight=2, wait_s=0.05)
    assert await control.enter()
    assert await control.enter()
    assert control.in_flight == 2
    started = asyncio.get_running_loop().time()
    assert not await control.enter()
    assert asyncio.get_running_loop().time() - started >= 0.04
    assert control.waiting == 0  # the refused request left the line
    control.leave()
    assert await control.enter()
    for _ in range(2):
        control.leave()
    assert control.in_flight == 0


async def test_a_freed_slot_goes_to_the_first_in_line() -> None:
    control = AdmissionControl(max_in_flight=1, wait_s=5.0)
    assert await control.enter()
    first = asyncio.create_task(control.enter())
    await asyncio.sleep(0)
    second = asyncio.create_task(control.enter())
    await asyncio.sleep(0)
    assert control.waiting == 2
    # A newcomer does not jump the line even at the moment a slot is free.
    control.leave()
    assert await first
    assert control.in_flight == 1
    assert not second.done()
    control.leave()
    assert await second
    control.leave()
    assert control.in_flight == 0
    assert control.waiting == 0


async def test_a_full_line_refuses_newcomers_at_once() -> None:
    control = AdmissionControl(max_in_flight=1, wait_s=5.0)
    assert await control.enter()
    waiting = [asyncio.create_task(control.enter()) for _ in range(control.max_waiting)]
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert not await control.enter()
    assert asyncio.get_running_loop().time() - started < 0.5
    for _ in waiting:
        control.leave()
        await asyncio.sleep(0)
    assert all(await asyncio.gather(*waiting))
    control.leave()
    assert control.in_flight == 0


async def test_a_request_that_goes_away_in_line_takes_no_slot_with_it() -> None:
    control = AdmissionControl(max_in_flight=1, wait_s=5.0)
    assert await control.enter()
    gone = asyncio.create_task(control.enter())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    control.leave()  # nobody left in line: the slot is freed, not handed to the cancelled one
    assert control.in_flight == 0
    assert await control.enter()


async def test_a_request_whose_wait_ended_as_a_slot_was_freed_leaves_the_line_cleanly() -> None:
    """Its turn is cancelled (the wait ran out, or its client went) and, before it runs again, another
    request leaves and drops the cancelled turn from the line: the slot is freed, the request refused."""
    control = AdmissionControl(max_in_flight=1, wait_s=5.0)
    assert await control.enter()
    gone = asyncio.create_task(control.enter())
    await asyncio.sleep(0)
    gone.cancel()  # its turn is cancelled now...
    control.leave()  # ...and dropped from the line here, before `gone` runs again
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert control.in_flight == 0
    assert control.waiting == 0


async def test_a_slot_handed_to_a_request_cancelled_at_that_moment_is_passed_on() -> None:
    control = AdmissionControl(max_in_flight=1, wait_s=5.0)
    assert await control.enter()
    gone = asyncio.create_task(control.enter())
    await asyncio.sleep(0)
    control.leave()  # the slot is handed over...
    gone.cancel()  # ...and the request is cancelled before it could run again
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert control.in_flight == 0
    assert control.waiting == 0


async def test_no_wait_refuses_at_once_when_full() -> None:
    control = AdmissionControl(max_in_flight=1, wait_s=0.0)
    assert await control.enter()
    assert not await control.enter()
    assert control.waiting == 0


# --- a live API process -----------------------------------------------------------------------------------
@pytest.fixture
async def one_slot_api(lab: Lab, tmp_path: Path) -> AsyncIterator[Api]:
    """An API process that serves one request at a time and lets the next wait 0.2 s for it."""
    process = start_api(
        lab.settings,
        tmp_path / "logs",
        SMSLAB_API_MAX_IN_FLIGHT="1",
        SMSLAB_API_ADMISSION_WAIT_SECONDS="0.2",
    )
    api = Api(lab.settings, process)
    try:
        yield api
    finally:
        await api.close()
        process.stop()


async def test_a_full_api_process_answers_503_overloaded_with_retry_after(one_slot_api: Api) -> None:
    """A slow upload holds the only slot; meanwhile a merchant's read is refused as the OpenAPI promises
    (503, problem details, `overloaded`, Retry-After), the probes still answer, and once the slot is free
    the same read is served. The refusal is counted by route."""
    api = one_slot_api
    merchant = api.as_shop()
    released = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"contacts": ['
        await released.wait()
        yield b'{"phone": "+12025550143", "sms_consent": true}]}'

    upload = asyncio.create_task(
        merchant.post("/api/contacts", content=slow_body(), headers={"Content-Type": "application/json"})
    )
    try:
        refused = None
        for _ in range(50):  # until the upload holds the slot
            refused = await merchant.get("/api/wallet")
            if refused.status_code == 503:
                break
            await asyncio.sleep(0.05)
        assert refused is not None
        assert refused.status_code == 503, refused.text
        body = problem(refused)
        assert body["type"].endswith("/overloaded")
        assert refused.headers["retry-after"] == "1"
        assert body["request_id"] == refused.headers["x-request-id"]
        assert (await api.anonymous().get("/health")).status_code == 200
        # No worker runs here, so not ready; but answered, not held back.
        assert (await api.anonymous().get("/health/full")).status_code in (200, 503)
    finally:
        released.set()
    assert (await upload).status_code == 200
    assert (await merchant.get("/api/wallet")).status_code == 200
    async with httpx.AsyncClient(base_url=api.base_url) as client:
        scrape = (await client.get("/metrics")).text
    counted = 'smslab_http_shed_total{route="/api/wallet"}'
    shed = [line for line in scrape.splitlines() if line.startswith(counted)]
    assert shed, scrape
    assert float(shed[0].split()[-1]) >= 1
