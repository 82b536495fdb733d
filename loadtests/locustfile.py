"""Locust users for the SMS pipeline: merchants, a webhook storm, a noisy tenant (docs/load.md).

    locust -f loadtests/locustfile.py --world runs/latest/world.json --host http://127.0.0.1:8000
    locust -f loadtests/locustfile.py MerchantUser ...          # one user class alone

Synchronous on purpose: `import locust` monkey-patches the process with gevent, so nothing of the
service's asyncio runs here; the users speak HTTP only, to the API and to the fake providers' control API.
What they act on (shops, customers, paid sessions, the lab's provider secrets) comes from a world file
that `smslab load` writes into its run folder (`world.json`), or that `smslab world` writes for a service
started with `smslab up`.

Request names are route templates (`/api/campaigns/{id}/enqueue`), so Locust's table groups them; calls
to the fake providers are named `sim ...`, and the noisy tenant's requests end in `NOISY_SUFFIX`, so the
gate can leave their latency alone. Every enqueue is also written as history (invoke, then ok / fail /
info with its key and answer, as `history.jsonl`), one file per Locust process in `--history-dir`, which
`smslab load` merges so that I6 judges load runs too.

Outcomes: 5xx, timeouts and refused connections are failures; so is a 429 without `Retry-After` and any
4xx a correct client never earns (400, 401, 404...). Answers the service owes a merchant under contention
(402 no credits, 409 key in flight or no longer a draft, 422 nothing to send, 429 with `Retry-After`)
are successes in Locust's table: the service answered as it must. So is a 503 `overloaded` with
`Retry-After` (a full API process refusing before doing anything, service/admission.py): every user
obeys it, it is recorded in the history as a definite refusal, and each class's count of them ("shed")
goes to `load_shed.json` beside the table, where the gate's `max_shed_ratio` bounds it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import itertools
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import jwt
from locust import FastHttpUser, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `locust -f loadtests/locustfile.py` from a checkout
    sys.path.insert(0, str(ROOT))

from chaos.load_gate import (  # noqa: E402
    NOISY_SUFFIX,
    SHED_JSON,
    StatRow,
    Thresholds,
    evaluate,
    unreachable,
)

EXPECTED_REFUSALS = {402, 409, 422}
OVERLOADED = "overloaded"  # the problem type of a full API process's 503 (service/admission.py)
# Each API request class's operation name in the history (the lab's own where it has one: I9 holds every
# one of them to the scenario's latency bound while a shop floods; `chaos/operations.py` API_OPERATIONS).
OPERATIONS = {
    ("POST", "/api/campaigns"): "create_campaign",
    ("GET", "/api/campaigns/{id}"): "get_campaign",
    ("GET", "/api/campaigns?limit={n}"): "list_campaigns",
    ("POST", "/api/campaigns/{id}/cancel"): "cancel_campaign",
    ("GET", "/api/wallet"): "wallet",
    ("POST", "/api/billing/checkout"): "checkout",
    ("POST", "/api/contacts"): "import_contacts",
    ("GET", "/api/contacts?limit={n}"): "list_contacts",
}
# The route class each of the noisy tenant's operations counts against (service/*/api.py), as I9 needs it
# to hold the served flood to its budget.
NOISY_ROUTE_CLASSES = {"list_contacts": "reports", "import_contacts": "imports", "checkout": "billing"}
RETRIES = 3  # an enqueue whose outcome is unknown is retried with the same Idempotency-Key
DUPLICATE = 0.2  # probability that an enqueue is sent twice at once
REFUSED_BACKOFF_S = (0.5, 4.0)  # the pause after a refused connection: doubling from 0.5 s up to 4 s

world: dict[str, Any] = {}
settings: dict[str, Any] = {"think_s": (0.0, 0.1)}


# --- options, the world, the gate ---------------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("smslab")
    group.add_argument("--world", default=os.environ.get("SMSLAB_WORLD", "world.json"), help="world file")
    group.add_argument("--history-dir", default="", help="where each process writes its enqueue history")
    group.add_argument("--weights", default="", help="user class weights: MerchantUser=10,WebhookStormUser=2")
    group.add_argument("--think", default="0,0.1", help="a user's pause between tasks: LOW,HIGH seconds")
    group.add_argument("--max-failure-ratio", type=float, default=Thresholds.max_failure_ratio)
    group.add_argument("--max-unreachable-ratio", type=float, default=Thresholds.max_unreachable_ratio)
    group.add_argument("--max-shed-ratio", type=float, default=Thresholds.max_shed_ratio)
    group.add_argument("--p95-ms", type=float, default=Thresholds.p95_ms, help="per request class; 0: off")
    group.add_argument("--p99-ms", type=float, default=Thresholds.p99_ms, help="per request class; 0: off")
    group.add_argument("--min-rps", type=float, default=Thresholds.min_rps)
    group.add_argument("--gate-file", default="", help="where the gate's result goes (JSON)")
    group.add_argument("--stages", default="[]", help="JSON [{duration_s, users, spawn_rate}] (stages.py)")


@events.init.add_listener
def _init(environment: Environment, **_kwargs: Any) -> None:
    settings["environment"] = environment
    options = environment.parsed_options
    if options is None:
        return
    world.update(json.loads(Path(options.world).read_text()))
    low, _, high = str(options.think).partition(",")
    settings["think_s"] = (float(low or 0), float(high or low or 0))
    settings["history_dir"] = options.history_dir
    for pair in filter(None, str(options.weights).split(",")):
        name, _, weight = pair.partition("=")
        for user_class in environment.user_classes:
            if user_class.__name__ == name.strip():
                user_class.weight = max(1, round(float(weight)))


@events.quitting.add_listener
def _gate(environment: Environment, **_kwargs: Any) -> None:
    """Locust's own exit code from the scenario's thresholds (only the master or a lone process has the
    totals); `smslab load` judges `load_stats.csv` by the same rule."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    thresholds = Thresholds(
        options.max_failure_ratio,
        options.max_unreachable_ratio,
        options.p95_ms,
        options.p99_ms,
        options.min_rps,
        options.max_shed_ratio,
    )
    refused = sum(
        error.occurrences for error in environment.stats.errors.values() if unreachable(str(error.error))
    )
    result = evaluate(
        [_row(entry) for entry in environment.stats.entries.values()],
        _row(environment.stats.total),
        thresholds,
        refused,
        dict(_shed),
    )
    environment.process_exit_code = 0 if result.passed else 1
    if options.gate_file:
        Path(options.gate_file).write_text(json.dumps(result.as_dict(), indent=1))
    verdict = "passed" if result.passed else "FAILED: " + "; ".join(result.why)
    print(f"load gate {verdict}", file=sys.stderr, flush=True)


@events.quitting.add_listener
def _write_final_csv(**_kwargs: Any) -> None:
    """Locust writes its CSV files once a second and not at exit, so the last second's requests (longer
    if the process was starved of CPU) would be missing from `load_stats.csv`, which `smslab load` judges
    and reports: once the runner stopped, the final figures replace each file whole.

    At `quitting`, not `quit`: between the two, Locust writes `--json-file` through `serialize_stats`,
    which empties every request class as it reads it (Locust 2.47), and the per-class rows written at
    `quit` were all zeros beside a full total, so the gate judged no class's latency at all."""
    environment = settings.get("environment")
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    tables = StatsCSV(environment, PERCENTILES_TO_REPORT)
    shed = Path(prefix).parent / SHED_JSON
    shed.with_suffix(".final").write_text(json.dumps(dict(sorted(_shed.items())), indent=1))
    shed.with_suffix(".final").replace(shed)
    for suffix, write in (
        ("stats", tables.requests_csv),
        ("failures", tables.failures_csv),
        ("exceptions", tables.exceptions_csv),
    ):
        path = Path(f"{prefix}_{suffix}.csv")
        scratch = path.with_suffix(".final")
        with scratch.open("w", newline="") as handle:
            write(csv.writer(handle))
        scratch.replace(path)  # Locust's own handle keeps the old file, whatever it still flushes


def _row(entry: Any) -> StatRow:
    return StatRow(
        method=entry.method or "",
        name=entry.name,
        requests=entry.num_requests,
        failures=entry.num_failures,
        rps=entry.total_rps,
        p50_ms=entry.get_response_time_percentile(0.5) or 0,
        p95_ms=entry.get_response_time_percentile(0.95) or 0,
        p99_ms=entry.get_response_time_percentile(0.99) or 0,
    )


# --- what every user shares -------------------------------------------------------------------------
# 503 overloaded answers by request class ("GET /api/wallet"), in this process; a worker sends its own to
# the master with each stats report (Locust's report_to_master / worker_report events), so the master,
# which gates and writes the table, holds them all.
_shed: dict[str, int] = {}


@events.report_to_master.add_listener
def _send_shed(data: dict[str, Any], **_kwargs: Any) -> None:
    data["smslab_shed"] = dict(_shed)
    _shed.clear()


@events.worker_report.add_listener
def _receive_shed(data: dict[str, Any], **_kwargs: Any) -> None:
    for name, count in (data.get("smslab_shed") or {}).items():
        _shed[name] = _shed.get(name, 0) + int(count)


def shed(response: Any) -> bool:
    """A full API process's refusal: 503, problem `overloaded`, a Retry-After of at least 1 s."""
    if response.status_code != 503 or not retry_after_ok(response):
        return False
    problem = body_of(response)
    return isinstance(problem, dict) and str(problem.get("type", "")).endswith("/" + OVERLOADED)


def retry_after_s(headers: Any, cap: float = 2.0) -> float:
    value = headers.get("Retry-After") if headers else None
    return min(float(value), cap) if isinstance(value, str) and value.isdigit() else 1.0


_users = itertools.count()
_history: dict[str, Any] = {}


def session_token(shop: str) -> str:
    """A Shopify-style session token, as App Bridge hands a merchant's browser (service/auth.py)."""
    now = int(time.time())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": world["secrets"]["shopify_api_key"],
        "sub": "1",
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
    }
    return jwt.encode(claims, world["secrets"]["shopify_api_secret"], algorithm="HS256")


def record(entry: dict[str, Any]) -> int:
    """One history entry in this process's file (`locust-<pid>.jsonl`): its own index, the wall clock."""
    directory = settings.get("history_dir")
    if not directory:
        return -1
    pid = os.getpid()
    if _history.get("pid") != pid:  # a forked worker (`--processes`) writes a file of its own
        Path(directory).mkdir(parents=True, exist_ok=True)
        _history.update(pid=pid, file=(Path(directory) / f"locust-{pid}.jsonl").open("a"), next=0)
    index = int(_history["next"])
    _history["next"] = index + 1
    _history["file"].write(json.dumps({"index": index, "wall": time.time(), **entry}) + "\n")
    _history["file"].flush()
    return index


# The storm's webhook posts by provider and outcome, in this process: `2xx` (the service counted it as
# applied or duplicate), `no_answer` (a timeout or a cut connection: it may have), `other` (a 4xx, 5xx or
# 429: counted as rejected or failed, or refused before the handler). Written as `storm-<pid>.json` in
# the history folder when the test stops, so the verdict's metrics observation counts them exactly.
_storm: dict[str, dict[str, int]] = {}
STORM_PROVIDERS = {
    "/webhooks/mitto/dlr": "mitto",
    "/webhooks/stripe": "stripe",
    "/webhooks/shopify": "shopify",
}


def count_storm_post(name: str, status: int) -> None:
    outcome = "2xx" if 200 <= status < 300 else "no_answer" if status == 0 else "other"
    posts = _storm.setdefault(STORM_PROVIDERS.get(name, name), {})
    posts[outcome] = posts.get(outcome, 0) + 1


@events.test_stop.add_listener
@events.quitting.add_listener
def _write_storm_counts(**_kwargs: Any) -> None:
    directory = settings.get("history_dir")
    if not directory or not _storm:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"storm-{os.getpid()}.json"
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"pid": os.getpid(), "posts": _storm}))
    scratch.replace(path)


def retry_after_ok(response: Any) -> bool:
    value = response.headers.get("Retry-After") if response.headers else None
    return isinstance(value, str) and value.isdigit() and int(value) >= 1


def body_of(response: Any) -> Any:
    try:
        return json.loads(response.text or "null")
    except (ValueError, TypeError):
        return None


class LabUser(FastHttpUser):
    """What the three users share: the world, a name in the history, a pause between tasks."""

    abstract = True
    network_timeout = 10.0
    connection_timeout = 5.0
    backoff_s = 0.0  # the pause after the latest refused connection (0: the latest got an answer)
    pause_s = 0.0  # the pause still to take after the latest call

    def back_off(self) -> None:
        if self.pause_s:
            pause, self.pause_s = self.pause_s, 0.0
            gevent.sleep(pause)

    def wait_time(self) -> float:
        low, high = settings["think_s"]
        return random.uniform(low, high)

    def on_start(self) -> None:
        self.number = next(_users)
        self.process = f"locust-{os.getpid()}-{self.number}"
        self._tokens: dict[str, tuple[float, str]] = {}

    def auth(self, shop: str) -> dict[str, str]:
        cached = self._tokens.get(shop)
        if cached is None or cached[0] < time.monotonic():
            cached = (time.monotonic() + 30, session_token(shop))
            self._tokens[shop] = cached
        return {"Authorization": f"Bearer {cached[1]}"}

    @property
    def simulator(self) -> str:
        return str(world["simulator_url"]).rstrip("/")

    def call(
        self,
        method: str,
        path: str,
        name: str,
        f: str,
        value: dict[str, Any],
        expected: set[int] | None = None,
        **kw: Any,
    ) -> tuple[int, Any, Any]:
        """One API request, judged in Locust's table and recorded in the history as the lab's client
        records its own (`chaos/client.py`): invoke, then ok (2xx), fail (4xx, with the 429's
        Retry-After) or info (5xx, no answer), so I9 judges it. A request that Locust's stop cut short is
        `info` with the error `interrupted`: the load generator gave up, not the service. Returns the
        status, the JSON body of a 2xx, and the headers."""
        op = record({"process": self.process, "type": "invoke", "f": f, "value": value})
        answer: dict[str, Any] = {"error": "interrupted"}
        kind = "info"
        try:
            with self.client.request(method, path, name=name, catch_response=True, **kw) as response:
                self.judge(response, expected)
                status = response.status_code
                body = body_of(response) if 200 <= status < 300 else None
                headers = response.headers
                if status == 0:
                    answer = {"error": type(getattr(response, "error", None)).__name__}
                elif status < 300:
                    kind, answer = "ok", {"status": status}
                else:
                    problem = body_of(response)
                    answer = {
                        "status": status,
                        "problem": str(problem.get("type", "")).rsplit("/", 1)[-1]
                        if isinstance(problem, dict)
                        else None,
                    }
                    # A shed request was refused before anything ran: a definite refusal, not unknown.
                    kind = "info" if status >= 500 and answer["problem"] != OVERLOADED else "fail"
                    if status in (429, 503):
                        answer["retry_after"] = headers.get("Retry-After") if headers else None
                    if answer["problem"] == OVERLOADED:
                        self.pause_s = max(self.pause_s, retry_after_s(headers))  # come back when told
        except Exception as exc:
            answer = {"error": type(exc).__name__}
            raise
        finally:
            if op >= 0:
                completion = {**value, **answer}
                record({"process": self.process, "type": kind, "f": f, "op": op, "value": completion})
        self.back_off()
        return status, body, headers

    def judge(self, response: ResponseContextManager, expected: set[int] | None = None) -> None:
        """Locust's success or failure, by the module's rule."""
        status = response.status_code
        if status == 0:
            error = getattr(response, "error", None)
            response.failure(f"no answer: {error!r}")
            if isinstance(error, ConnectionRefusedError):
                # Nobody listening (the API restarting): back off, doubling, as a careful client does
                # (the lab's own, chaos/client.py, pauses too), rather than spin on refusals and take
                # the CPU the API needs to start. Locust measured the request already: the pause is not
                # in its response time.
                # The pause is taken once the call is in the history (`back_off`): its answer's time
                # there is when it came, not after the pause.
                low, high = REFUSED_BACKOFF_S
                self.backoff_s = min(high, max(low, 2 * self.backoff_s))
                self.pause_s = random.uniform(0.5, 1.0) * self.backoff_s
            return
        self.backoff_s = 0.0  # an answer: somebody is listening again
        if 200 <= status < 300 or status in (expected or set()):
            response.success()
        elif shed(response):
            response.success()  # the answer a full process owes; counted apart, and obeyed by the caller
            request_class = f"{response.request_meta['request_type']} {response.request_meta['name']}"
            _shed[request_class] = _shed.get(request_class, 0) + 1
        elif status == 429:
            if retry_after_ok(response):
                response.success()
            else:
                response.failure("429 without a Retry-After of at least 1 s")
        else:
            response.failure(f"{status}: {response.text[:200] if response.text else ''}")


# --- merchants ------------------------------------------------------------------------------------------
class MerchantUser(LabUser):
    """A shop's own session: bulk imports, campaigns created and enqueued (retried and duplicated with one
    Idempotency-Key), polling, credits bought through the fake Stripe, drafts cancelled now and then.

    Weighted as a merchant's dashboard is used: mostly polling (a campaign's progress, the wallet, the
    list), a campaign created and enqueued one task in ten, each enqueue sending to the shop's contacts
    (and bringing the provider's delivery reports back to the API: two or three per message)."""

    weight = 10

    def on_start(self) -> None:
        super().on_start()
        shops = world["shops"]
        self.shop: dict[str, Any] = shops[(self.number + os.getpid()) % len(shops)]
        self.campaigns: list[int] = []

    def _json(self, method: str, path: str, name: str, expected: set[int] | None = None, **kw: Any) -> Any:
        headers = {**self.auth(self.shop["domain"]), **kw.pop("headers", {})}
        f = OPERATIONS[(method, name)]
        _status, body, _headers = self.call(
            method, path, name, f, {"shop": self.shop["domain"]}, expected, headers=headers, **kw
        )
        return body

    def _draft(self) -> int | None:
        created = self._json(
            "POST", "/api/campaigns", "/api/campaigns", json={"name": "load", "body": "A load test message"}
        )
        return int(created["id"]) if isinstance(created, dict) and "id" in created else None

    @task(3)
    def create_and_enqueue(self) -> None:
        campaign = self._draft()
        if campaign is None:
            return
        key = f"load-{uuid.uuid4()}"
        for _attempt in range(RETRIES + 1):
            if random.random() < DUPLICATE:
                both = [gevent.spawn(self._enqueue, campaign, key, twin) for twin in (False, True)]
                gevent.joinall(both)
                answers = [greenlet.value for greenlet in both if greenlet.value is not None]
            else:
                answers = [self._enqueue(campaign, key, False)]
            unknown = [wait for kind, wait in answers if kind == "info" or wait]
            if not unknown:
                break
            gevent.sleep(max(0.2, *unknown))  # then a careful client retries with the same key
        self.campaigns.append(campaign)

    def _enqueue(self, campaign: int, key: str, duplicate: bool) -> tuple[str, float]:
        """One enqueue request, in Locust's table and in the history: its kind there, and how long a 429
        said to wait before the retry (0 otherwise)."""
        value: dict[str, Any] = {"shop": self.shop["domain"], "campaign": campaign, "key": key}
        if duplicate:
            value["duplicate"] = True
        op = record({"process": self.process, "type": "invoke", "f": "enqueue", "value": value})
        headers = {**self.auth(self.shop["domain"]), "Idempotency-Key": key}
        kind, wait = "info", 0.0
        answer: dict[str, Any] = {"error": "interrupted"}  # unless an answer comes
        try:
            with self.client.post(
                f"/api/campaigns/{campaign}/enqueue",
                name="/api/campaigns/{id}/enqueue",
                headers=headers,
                catch_response=True,
            ) as response:
                self.judge(response, EXPECTED_REFUSALS)
                status = response.status_code
                body = body_of(response)
                if status == 0:
                    answer = {"error": type(getattr(response, "error", None)).__name__}
                elif status < 300:
                    kind, answer = "ok", {"status": status, "response": body}
                else:
                    problem = str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else None
                    kind = "info" if status >= 500 and problem != OVERLOADED else "fail"
                    answer = {"status": status, "problem": problem}
                    if status == 429 or problem == OVERLOADED:
                        # Refused before the key was claimed: retried with the same key when told.
                        answer["retry_after"] = response.headers.get("Retry-After")
                        wait = retry_after_s(response.headers)
        except Exception as exc:
            answer = {"error": type(exc).__name__}
            raise
        finally:
            record(
                {
                    "process": self.process,
                    "type": kind,
                    "f": "enqueue",
                    "op": op,
                    "value": {**value, **answer},
                }
            )
        self.back_off()
        return kind, wait

    @task(12)
    def poll_campaign(self) -> None:
        if self.campaigns:
            campaign = random.choice(self.campaigns[-20:])
            self._json("GET", f"/api/campaigns/{campaign}", "/api/campaigns/{id}")

    @task(8)
    def wallet(self) -> None:
        self._json("GET", "/api/wallet", "/api/wallet")

    @task(4)
    def list_campaigns(self) -> None:
        self._json("GET", "/api/campaigns?limit=20", "/api/campaigns?limit={n}")

    @task(1)
    def buy_credits(self) -> None:
        """Checkout through the API, then the customer pays at the fake Stripe (its control API)."""
        session = self._json(
            "POST",
            "/api/billing/checkout",
            "/api/billing/checkout",
            json={"credits": int(world.get("credit_package", 1000))},
            headers={"Idempotency-Key": f"load-buy-{uuid.uuid4()}"},
        )
        if not isinstance(session, dict) or "session_id" not in session:
            return
        with self.client.post(
            f"{self.simulator}/control/stripe/sessions/{session['session_id']}/pay",
            name="sim /control/stripe/sessions/{id}/pay",
            json={},
            catch_response=True,
        ) as response:
            self.judge(response)

    @task(1)
    def cancel_draft(self) -> None:
        campaign = self._draft()
        if campaign is not None:
            self._json("POST", f"/api/campaigns/{campaign}/cancel", "/api/campaigns/{id}/cancel", {409})

    @task(1)
    def import_contacts(self) -> None:
        """The shop's own contacts again, in bulk (an upsert: the same numbers, nothing new to send)."""
        rows = [{"phone": phone, "sms_consent": True} for phone in self.shop["phones"]]
        self._json("POST", "/api/contacts", "/api/contacts", json={"contacts": rows})


# --- the providers under pressure -----------------------------------------------------------------------
class WebhookStormUser(LabUser):
    """What the providers send under pressure, signed as they sign: bursts of Mitto's delivery reports
    for real messages (copies of the reports Mitto made, duplicated and out of order; an early `Sent` for
    a message just accepted), Stripe events delivered again, Shopify customer updates, several copies of
    one event at once. It replays and never invents an outcome, so I5 and I7 still judge by the fakes'
    ledgers: any effect beyond the first copy is the service's fault."""

    weight = 2

    def _post(self, path: str, name: str, body: bytes, headers: dict[str, str]) -> None:
        status = 0
        try:
            with self.client.post(
                path,
                name=name,
                data=body.decode(),
                headers={"Content-Type": "application/json", **headers},
                catch_response=True,
            ) as response:
                status = response.status_code
                self.judge(response)
        finally:
            count_storm_post(name, status)  # a post cut short by Locust's stop: no answer
        self.back_off()

    def _at_once(self, copies: int, send: Any) -> None:
        gevent.joinall([gevent.spawn(send) for _ in range(copies)])

    @task(5)
    def delivery_reports(self) -> None:
        with self.client.get(
            f"{self.simulator}/control/mitto/recent?limit=200",
            name="sim /control/mitto/recent",
            catch_response=True,
        ) as response:
            self.judge(response)
            recent = body_of(response) if response.status_code == 200 else None
        if not isinstance(recent, dict):
            return
        path = f"/webhooks/mitto/dlr?token={world['secrets']['mitto_dlr_token']}"
        name = "/webhooks/mitto/dlr"
        reports = [r for r in recent.get("reports", []) if r.get("timestamp")]
        burst = random.sample(reports, min(len(reports), 10))
        random.shuffle(burst)  # out of order: a `Sent` may now come after its final report
        for report in burst:
            body = json.dumps(report).encode()
            self._at_once(random.choice((1, 1, 2, 3)), lambda body=body: self._post(path, name, body, {}))
        reported = {r.get("messageId") for r in reports}
        for accepted in recent.get("accepted", [])[-3:]:
            if accepted["message_id"] not in reported:  # early: before Mitto's own callbacks
                early = {
                    "messageId": accepted["message_id"],
                    "reference": accepted["reference"],
                    "status": "Sent",
                    "errorCode": None,
                    "timestamp": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}+00:00",
                }
                self._post(path, name, json.dumps(early).encode(), {})

    @task(2)
    def stripe_redeliveries(self) -> None:
        with self.client.get(
            f"{self.simulator}/control/stripe/events", name="sim /control/stripe/events", catch_response=True
        ) as response:
            self.judge(response)
            events_made = (body_of(response) or {}).get("events", []) if response.status_code == 200 else []
        if not events_made:
            return
        body = json.dumps(random.choice(events_made[-50:]), separators=(",", ":")).encode()
        secret = str(world["secrets"]["stripe_webhook_secret"])

        def send() -> None:
            stamp = int(time.time())
            signature = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            self._post(
                "/webhooks/stripe",
                "/webhooks/stripe",
                body,
                {"Stripe-Signature": f"t={stamp},v1={signature}"},
            )

        self._at_once(random.choice((1, 2, 3)), send)

    @task(2)
    def shopify_customer_updates(self) -> None:
        shop = random.choice(world["shops"])
        if not shop["customers"]:
            return
        customer = random.choice(shop["customers"])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = json.dumps(
            {
                **customer,
                "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
                "updated_at": now,
            },
            separators=(",", ":"),
        ).encode()
        digest = base64.b64encode(
            hmac.new(str(world["secrets"]["shopify_api_secret"]).encode(), body, hashlib.sha256).digest()
        ).decode()
        event = str(uuid.uuid4())

        def send() -> None:
            headers = {
                "X-Shopify-Topic": "customers/update",
                "X-Shopify-Shop-Domain": shop["domain"],
                "X-Shopify-API-Version": "2025-07",
                "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                "X-Shopify-Event-Id": event,
                "X-Shopify-Triggered-At": now,
                "X-Shopify-Hmac-Sha256": digest,
            }
            self._post("/webhooks/shopify", "/webhooks/shopify", body, headers)

        self._at_once(random.choice((1, 1, 2, 3)), send)


# --- the noisy tenant -----------------------------------------------------------------------------------
class NoisyTenantUser(LabUser):
    """One shop hammering the API far past its budget, back to back. With rate limits on it must get 429
    with `Retry-After` (a success here: the answer it was owed), which it obeys half the time."""

    weight = 1

    def wait_time(self) -> float:
        return 0.0

    def _hammer(self, method: str, path: str, name: str, **kw: Any) -> None:
        shop = world["noisy"]["shop"]
        headers = {**self.auth(shop), **kw.pop("headers", {})}
        f = OPERATIONS[(method, name)]
        # In the history as the lab's own noisy tenant is (`chaos/operations.py` `flooding`): I9 judges it.
        value = {"shop": shop, "flood": True, "route_class": NOISY_ROUTE_CLASSES[f]}
        status, _body, answer_headers = self.call(
            method, path, name + NOISY_SUFFIX, f, value, headers=headers, **kw
        )
        wait = answer_headers.get("Retry-After") if status == 429 and answer_headers else None
        if wait and wait.isdigit() and random.random() < 0.5:
            gevent.sleep(min(int(wait), 2))  # obeys, sometimes

    @task(4)
    def list_contacts(self) -> None:
        self._hammer("GET", "/api/contacts?limit=200", "/api/contacts?limit={n}")

    @task(2)
    def import_contacts(self) -> None:
        rows = [{"phone": phone, "sms_consent": True} for phone in world["noisy"]["phones"]]
        self._hammer("POST", "/api/contacts", "/api/contacts", json={"contacts": rows})

    @task(1)
    def checkout(self) -> None:
        self._hammer(
            "POST",
            "/api/billing/checkout",
            "/api/billing/checkout",
            json={"credits": int(world.get("credit_package", 1000))},
            headers={"Idempotency-Key": f"noisy-{uuid.uuid4()}"},
        )
