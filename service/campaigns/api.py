"""HTTP: campaign drafts, reads, cancel, and the idempotent enqueue."""

from __future__ import annotations

import json
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, logs
from service.campaigns import drafts
from service.campaigns.enqueue import enqueue_campaign
from service.db.models import Shop
from service.errors import BadRequest
from service.http import runtime_of
from service.queue import enqueue_send_batches

log = logs.get_logger(__name__)


class CampaignsController(Controller):
    path = "/api/campaigns"
    tags = ["campaigns"]

    @post("/", status_code=201, summary="Create a draft campaign")
    async def create(self, data: dict[str, Any], shop: Shop, db_session: AsyncSession) -> dict[str, Any]:
        campaign = await drafts.create_campaign(db_session, shop.id, data.get("name"), data.get("body"))
        return {**drafts.summary(campaign), "body": campaign.body}

    @get("/", summary="List campaigns; pass next_cursor as `after` for the next page")
    async def list_campaigns(
        self,
        shop: Shop,
        db_session: AsyncSession,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        after: Annotated[int | None, Parameter(ge=0)] = None,
    ) -> dict[str, Any]:
        rows, next_cursor = await drafts.list_campaigns(db_session, shop.id, limit, after)
        return {"items": [drafts.summary(c) for c in rows], "next_cursor": next_cursor}

    @get("/{campaign_id:int}", summary="A campaign with counts by recipient status and its credits")
    async def detail(self, campaign_id: int, shop: Shop, db_session: AsyncSession) -> dict[str, Any]:
        return await drafts.campaign_detail(db_session, shop.id, campaign_id)

    @post("/{campaign_id:int}/cancel", status_code=200, summary="Cancel a draft or sending campaign")
    async def cancel(self, campaign_id: int, shop: Shop, db_session: AsyncSession) -> dict[str, Any]:
        return await drafts.cancel_campaign(db_session, shop.id, campaign_id)

    @post(
        "/{campaign_id:int}/enqueue",
        status_code=202,
        summary="Start sending; idempotent with an Idempotency-Key header",
        description=(
            "202 with the recipient count and reserved credits. Same key and same request: the stored "
            "answer again (header Idempotent-Replayed: true), a refusal as well as a 202. Same key, other "
            "request: 422. Same key still in flight: 409. Campaign no longer a draft: 409. Not enough "
            "credits: 402, nothing changed."
        ),
    )
    async def enqueue(
        self,
        campaign_id: int,
        request: Request[Any, Any, Any],
        shop: Shop,
        db_session: AsyncSession,
        state: State,
        idempotency_key: Annotated[str | None, Parameter(header="Idempotency-Key")] = None,
    ) -> Response[dict[str, Any]]:
        runtime = runtime_of(state)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise BadRequest("request body is not JSON") from None
        outcome = await enqueue_campaign(
            db_session,
            runtime.settings,
            shop_id=shop.id,
            campaign_id=campaign_id,
            idempotency_key=idempotency_key,
            request_body=body,
        )
        if outcome.batches_to_queue:
            await failpoints.hit("enqueue.before_jobs")
            try:
                await enqueue_send_batches(
                    runtime.queue,
                    runtime.settings,
                    campaign_id,
                    outcome.batches_to_queue,
                    logs.current_request_id(),
                )
            except Exception as exc:  # noqa: BLE001 - committed already; the reconciler queues them
                log.warning("send_jobs_not_queued", campaign_id=campaign_id, error=type(exc).__name__)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return Response(content=outcome.body, status_code=outcome.status, headers=headers)
