"""HTTP: campaign drafts, reads, cancel, and the idempotent enqueue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, PathParameter
from saq.queue.redis import RedisQueue
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service import failpoints, logs
from service.campaigns import drafts
from service.campaigns.drafts import MAX_BODY_CHARACTERS, MAX_NAME_CHARACTERS, CampaignDetail
from service.campaigns.enqueue import EnqueueAccepted, enqueue_campaign
from service.db.models import Campaign
from service.errors import ProblemError
from service.http import documented_body, problems
from service.input_rules import IDEMPOTENCY_KEY_SCHEMA, MAX_INT64, decode_json
from service.metrics import ENQUEUES
from service.pagination import Page
from service.queue import enqueue_send_batches
from service.rate_limits import RouteClass, rate_class
from service.settings import Settings
from service.shops import SessionShop

log = logs.get_logger(__name__)


# The bounds are also given as exact integers: Litestar writes `le` as a float, and 2^63 - 1 as a float is
# 2^63, which a client (schemathesis) then takes as allowed.
CampaignId = Annotated[
    int,
    PathParameter(
        ge=1,
        le=MAX_INT64,
        description="The campaign's id",
        schema_extra={"minimum": 1, "maximum": MAX_INT64},
    ),
]


class CampaignDraftIn(msgspec.Struct):
    """A draft: a name for the merchant, and the message text (its length sets the credits per SMS)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARACTERS)]
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARACTERS)]


class CampaignSummary(msgspec.Struct):
    id: int
    name: str
    status: str
    status_reason: str | None
    segments: int
    recipient_count: int
    sent_count: int
    failed_count: int
    created_at: datetime
    enqueued_at: datetime | None
    finished_at: datetime | None
    last_activity_at: datetime

    @classmethod
    def of(cls, campaign: Campaign | Row[Any]) -> CampaignSummary:
        return cls(
            id=campaign.id,
            name=campaign.name,
            status=campaign.status,
            status_reason=campaign.status_reason,
            segments=campaign.segments,
            recipient_count=campaign.recipient_count,
            sent_count=campaign.sent_count,
            failed_count=campaign.failed_count,
            created_at=campaign.created_at,
            enqueued_at=campaign.enqueued_at,
            finished_at=campaign.finished_at,
            last_activity_at=campaign.last_activity_at,
        )


class CampaignCreated(CampaignSummary):
    body: str


class CampaignCredits(msgspec.Struct):
    reserved: int
    reserved_remaining: int
    reservation_status: str | None
    debited: int


class CampaignView(CampaignSummary):
    """A campaign, its recipients counted by status (from the rows themselves) and its credits."""

    body: str
    counts: dict[str, int]
    credits: CampaignCredits

    @classmethod
    def of_detail(cls, detail: CampaignDetail) -> CampaignView:
        reservation = detail.reservation
        return cls(
            **msgspec.structs.asdict(CampaignSummary.of(detail.campaign)),
            body=detail.campaign.body,
            counts=detail.counts,
            credits=CampaignCredits(
                reserved=reservation.amount if reservation else 0,
                reserved_remaining=reservation.remaining if reservation else 0,
                reservation_status=reservation.status if reservation else None,
                debited=detail.debited,
            ),
        )


class CampaignPage(msgspec.Struct):
    items: list[CampaignSummary]
    next_cursor: int | None


class CampaignsController(Controller):
    path = "/api/campaigns"
    tags = ["campaigns"]

    @post(
        "/",
        status_code=201,
        summary="Create a draft campaign",
        opt=rate_class(RouteClass.CAMPAIGNS),
        responses=problems(400, 429, 401, 413, 422, 503),
        operation_class=documented_body(CampaignDraftIn, "The draft"),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        shop: NamedDependency[SessionShop],
        db_session: NamedDependency[AsyncSession],
    ) -> CampaignCreated:
        data = decode_json(await request.body())
        if not isinstance(data, dict):
            data = {}
        campaign = await drafts.create_campaign(db_session, shop.id, data.get("name"), data.get("body"))
        return CampaignCreated(**msgspec.structs.asdict(CampaignSummary.of(campaign)), body=campaign.body)

    @get(
        "/",
        summary="List campaigns; pass next_cursor as `after` for the next page",
        opt=rate_class(RouteClass.REPORTS),
        responses=problems(400, 429, 401, 503),
    )
    async def list_campaigns(
        self,
        shop: NamedDependency[SessionShop],
        reader: NamedDependency[AsyncConnection],
        page: NamedDependency[Page],
    ) -> CampaignPage:
        rows, next_cursor = await drafts.list_campaigns(reader, shop.id, page)
        return CampaignPage([CampaignSummary.of(c) for c in rows], next_cursor)

    @get(
        "/{campaign_id:int}",
        summary="A campaign with counts by recipient status and its credits",
        opt=rate_class(RouteClass.CAMPAIGNS),
        responses=problems(400, 429, 401, 404, 503),
    )
    async def detail(
        self,
        campaign_id: CampaignId,
        shop: NamedDependency[SessionShop],
        reader: NamedDependency[AsyncConnection],
    ) -> CampaignView:
        return CampaignView.of_detail(await drafts.campaign_detail(reader, shop.id, campaign_id))

    @post(
        "/{campaign_id:int}/cancel",
        status_code=200,
        summary="Cancel a draft or sending campaign",
        opt=rate_class(RouteClass.STRICT),
        responses=problems(400, 429, 401, 404, 409, 503, s409="The campaign has already finished"),
    )
    async def cancel(
        self,
        campaign_id: CampaignId,
        shop: NamedDependency[SessionShop],
        db_session: NamedDependency[AsyncSession],
    ) -> CampaignView:
        return CampaignView.of_detail(await drafts.cancel_campaign(db_session, shop.id, campaign_id))

    @post(
        "/{campaign_id:int}/enqueue",
        status_code=202,
        summary="Start sending; idempotent with an Idempotency-Key header",
        opt=rate_class(RouteClass.STRICT),
        description=(
            "202 with the recipient count and reserved credits. Same key and same request: the stored "
            "answer again (header Idempotent-Replayed: true), a refusal as well as a 202. Same key, other "
            "request: 422. Same key still in flight: 409. Campaign no longer a draft: 409. Not enough "
            "credits: 402, nothing changed."
        ),
        responses=problems(
            400,
            429,
            401,
            402,
            404,
            409,
            413,
            422,
            503,
            s409="The campaign is no longer a draft, or a request with this key is still in flight",
            s422="The campaign has no consenting recipients, or the key was used for another request",
        ),
    )
    async def enqueue(
        self,
        campaign_id: CampaignId,
        request: Request[Any, Any, Any],
        shop: NamedDependency[SessionShop],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        queue: NamedDependency[RedisQueue],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                description="1 to 255 printable ASCII characters; a retry with the same key is answered once",
                schema_extra=IDEMPOTENCY_KEY_SCHEMA,
            ),
        ] = None,
    ) -> Response[EnqueueAccepted]:
        raw = await request.body()
        body = decode_json(raw) if raw.strip() else None
        try:
            outcome = await enqueue_campaign(
                db_session,
                settings,
                shop_id=shop.id,
                campaign_id=campaign_id,
                idempotency_key=idempotency_key,
                request_body=body,
            )
        except ProblemError as refusal:
            ENQUEUES.labels(outcome=refusal.slug).inc()
            raise
        ENQUEUES.labels(outcome="replayed" if outcome.replayed else "accepted").inc()
        if outcome.batches_to_queue:
            await failpoints.hit("enqueue.before_jobs")
            try:
                await enqueue_send_batches(
                    queue, settings, campaign_id, outcome.batches_to_queue, logs.current_request_id()
                )
            except Exception as exc:  # noqa: BLE001 - committed already; the reconciler queues them
                log.warning("send_jobs_not_queued", campaign_id=campaign_id, error=type(exc).__name__)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return Response(content=outcome.body, status_code=outcome.status, headers=headers)
