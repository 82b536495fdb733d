"""Lab scenarios: what a run does and what goes wrong in it, in one TOML file (chaos/scenarios/*.toml).

The format, every field with its default, and worked examples are in docs/lab.md ("Scenario format"),
whose blocks `tests/test_lab_docs.py` parses with this module: the document is kept true by the test,
and this docstring does not repeat it.

Every problem is refused before anything starts, naming the field (`scenario.workload.clients: ...`).
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from chaos.load_gate import Thresholds
from chaos.proxy import Toxic, ToxicError
from service import failpoints, safeguards
from service.contacts.upsert import MAX_CONTACTS_PER_REQUEST
from service.rate_limits import parse_limits
from service.settings import Settings, lease_problem
from simulator.faults import FaultSpecError, parse_rules
from simulator.mitto import parse_final_mix

SCENARIOS_DIR = Path(__file__).with_name("scenarios")
NEMESIS_ACTIONS = ("kill_worker", "kill_api", "restart_redis", "cut_db_connections", "toxic")
PROXIES = ("db", "redis", "providers")
OPERATIONS = ("campaign", "buy", "refund", "consent", "redact", "uninstall")
USER_CLASSES = ("MerchantUser", "WebhookStormUser", "NoisyTenantUser")  # loadtests/locustfile.py


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the field."""


@dataclass(frozen=True)
class Services:
    workers: int = 2
    worker_concurrency: int = 4
    api_workers: int = 1
    lease_s: float = 4.0
    reconcile_interval_s: float = 1.0
    batch_size: int = 50
    mitto_timeout_s: float = 2.0
    unresolved_policy: str = "at-most-once"
    unresolved_give_up_s: float = 600.0
    safeguards_off: tuple[str, ...] = ()
    worker_failpoints: str = ""
    api_failpoints: str = ""
    log_sql: bool = False
    rate_limits: str = ""  # SMSLAB_RATE_LIMITS: over the service's defaults, e.g. "imports=4/minute burst=1"
    # Admission control of each API process (service/admission.py), by default the service's own.
    api_max_in_flight: int = Settings.api_max_in_flight  # SMSLAB_API_MAX_IN_FLIGHT (0: no cap)
    api_admission_wait_s: float = Settings.api_admission_wait_seconds  # SMSLAB_API_ADMISSION_WAIT_SECONDS


@dataclass(frozen=True)
class Noisy:
    """A noisy tenant: one more shop whose clients flood the expensive routes, back to back (I9)."""

    clients: int = 0  # 0: no noisy tenant
    import_rows: int = 10_000  # contacts per bulk import (the same ones again: upserts)
    timeout_s: float = 30.0  # its own patience: an admitted import may take a while
    think_s: tuple[float, float] = (0.0, 0.0)
    mix: tuple[tuple[str, float], ...] = (("import_contacts", 2.0), ("checkout", 1.0), ("list_contacts", 4.0))


NOISY_OPERATIONS = ("import_contacts", "checkout", "list_contacts")


@dataclass(frozen=True)
class Workload:
    duration_s: float = 20.0
    shops: int = 2
    contacts_per_shop: int = 200
    customers_per_shop: int = 10
    clients: int = 4
    client_timeout_s: float = 3.0
    credits_per_shop: int = 5000
    duplicate_enqueue: float = 0.2
    retries: int = 3
    consent_before_redact: float = 0.0
    think_s: tuple[float, float] = (0.0, 0.05)
    # Uninstalling stops a shop's clients; unless a scenario says so, the last active shop is never
    # uninstalled, so the workload cannot end its own chaos phase early (a vacuous run).
    uninstall_last_shop: bool = False
    mix: tuple[tuple[str, float], ...] = (
        ("campaign", 10.0),
        ("buy", 2.0),
        ("refund", 1.0),
        ("consent", 2.0),
        ("redact", 1.0),
        ("uninstall", 0.0),
    )
    noisy: Noisy = field(default_factory=Noisy)


@dataclass(frozen=True)
class SimulatorPlan:
    dlr_delay_ms: float = 50.0
    dlr_final: str = "Delivered=0.9,Undeliverable=0.05,Expired=0.05"
    faults: tuple[dict[str, Any], ...] = ()
    # The providers' retry horizons, compressed, outlast the chaos phase and the settle bound (as real
    # ones, hours or days, outlast a restart), unless the scenario wants to see them give up.
    providers_give_up: bool = False


@dataclass(frozen=True)
class Minimums:
    """What a run must have exercised for its verdict to count; below any, the verdict is `unknown`."""

    chaos_share: float = 0.9  # of the planned chaos duration that the workload really ran
    every_nemesis_event: bool = True  # every planned nemesis event fired
    # a provider fault rule expected to fire at least this often (probability x requests seen) fired.
    # Ten, not three: a rule expected three times fires zero times by chance alone one run in twenty
    # ((1-p)^n ~ e^-3), and CI's matrix, with dozens of rules, met exactly that (bad_signature on
    # stripe.webhook, 32 requests x 0.1, none); at ten it is one run in 22,000 ((1-p)^n ~ e^-10).
    expected_fires: float = 10.0
    campaigns_completed: int = 1


@dataclass(frozen=True)
class Stage:
    """One step of a load shape: hold `users` (reached at `spawn_rate` a second) for `duration_s`."""

    duration_s: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class LoadPlan:
    """`smslab load`: Locust as the workload (docs/load.md). Without `stages`, `users` started at
    `spawn_rate` a second and held for `duration_s`; with stages, one after the other (a LoadTestShape)."""

    duration_s: float = 20.0
    users: int = 20
    spawn_rate: float = 10.0
    processes: int = 0  # Locust worker processes beside its master; 0: one Locust process
    think_s: tuple[float, float] = (0.0, 0.1)  # a user's pause between two tasks
    user_classes: tuple[tuple[str, float], ...] = (
        ("MerchantUser", 10.0),
        ("WebhookStormUser", 2.0),
        ("NoisyTenantUser", 0.0),
    )
    thresholds: Thresholds = field(default_factory=Thresholds)
    stages: tuple[Stage, ...] = ()
    # Campaigns each shop enqueues before Locust starts (by the lab's own client, in the history): real
    # messages for a webhook storm that runs without merchants.
    warmup_campaigns: int = 0

    @property
    def total_s(self) -> float:
        """How long Locust runs: the stages' sum when there are stages."""
        return sum(stage.duration_s for stage in self.stages) if self.stages else self.duration_s

    @property
    def weights(self) -> dict[str, float]:
        return {name: weight for name, weight in self.user_classes if weight > 0}


@dataclass(frozen=True)
class NemesisRule:
    action: str
    every_s: tuple[float, float] | None = None
    at_s: float | None = None
    restart_after_s: tuple[float, float] = (0.5, 1.5)
    duration_s: float = 2.0
    proxy: str | None = None
    toxic: dict[str, Any] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 0
    quiescence_s: float = 30.0
    latency_bound_s: float = 2.0  # I9: how long another shop's API request may take while one floods
    backend: str = "any"
    services: Services = field(default_factory=Services)
    workload: Workload = field(default_factory=Workload)
    simulator: SimulatorPlan = field(default_factory=SimulatorPlan)
    nemesis: tuple[NemesisRule, ...] = ()
    minimums: Minimums = field(default_factory=Minimums)
    # A scenario in chaos/regressions/: the invariant it once broke, where it was found, what fixed it.
    regression: dict[str, str] = field(default_factory=dict)
    # A scenario in chaos/seed_gaps/: the smallest reproduction of one gap the seed admits (its safeguards
    # stay off): the invariant it breaks, the gap in the seed's words, the swarm run it was shrunk from.
    seed_gap: dict[str, str] = field(default_factory=dict)
    load: LoadPlan = field(default_factory=LoadPlan)
    source: str = ""  # the TOML as written
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def proxied(self) -> frozenset[str]:
        """The upstreams (of `PROXIES`) the nemesis puts a toxic on: the service reaches these through
        the lab's TCP proxy, and every other one directly."""
        return frozenset(str(rule.proxy) for rule in self.nemesis if rule.action == "toxic")

    def with_changes(self, changes: dict[str, Any]) -> Scenario:
        """The scenario with some fields changed (tables merged key by key), checked again like a file."""
        return parse_scenario(_merged(self.document or {"name": self.name}, changes))

    def with_seed(self, seed: int) -> Scenario:
        return self.with_changes({"seed": seed})

    def with_safeguards_off(self, names: tuple[str, ...]) -> Scenario:
        return self.with_changes({"services": {"safeguards_off": list(names)}})

    def as_toml(self) -> str:
        """The scenario as it will run, as a scenario file (`smslab replay` reads it back)."""
        return tomli_w.dumps(self.document or {"name": self.name})


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_keys(where: str, table: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    return table


def _int(where: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScenarioError(f"{where}: must be a whole number >= {low}")
    return value


def _float(where: str, value: Any, low: float = 0.0, high: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ScenarioError(f"{where}: must be a number {bound}")
    return float(value)


def _range(where: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ScenarioError(f"{where}: must be [low, high] in seconds")
    low, high = _float(f"{where}[0]", value[0]), _float(f"{where}[1]", value[1])
    if high < low:
        raise ScenarioError(f"{where}: high must not be below low")
    return low, high


def _from_casters(where: str, table: dict[str, Any], casters: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, caster in casters.items():
        if name in table:
            values[name] = caster(f"{where}.{name}", table[name])
    return values


def _services(table: Any) -> Services:
    where = "scenario.services"
    table = _check_keys(where, table, set(Services.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "workers": lambda w, v: _int(w, v, 1),
            "worker_concurrency": lambda w, v: _int(w, v, 1),
            "api_workers": lambda w, v: _int(w, v, 1),
            "api_max_in_flight": lambda w, v: _int(w, v, 0),
            "api_admission_wait_s": lambda w, v: _float(w, v, 0.0),
            "lease_s": lambda w, v: _float(w, v, 0.5),
            "reconcile_interval_s": lambda w, v: _float(w, v, 0.2),
            "batch_size": lambda w, v: _int(w, v, 1),
            "mitto_timeout_s": lambda w, v: _float(w, v, 0.1),
            "unresolved_give_up_s": lambda w, v: _float(w, v, 0.01),
        },
    )
    if "unresolved_policy" in table:
        if table["unresolved_policy"] not in ("at-most-once", "at-least-once"):
            raise ScenarioError(f"{where}.unresolved_policy: must be at-most-once or at-least-once")
        values["unresolved_policy"] = table["unresolved_policy"]
    off = table.get("safeguards_off", [])
    if not isinstance(off, list) or any(name not in safeguards.REGISTRY for name in off):
        raise ScenarioError(
            f"{where}.safeguards_off: must list safeguards among {', '.join(safeguards.REGISTRY)}"
        )
    values["safeguards_off"] = tuple(off)
    if "log_sql" in table:
        if not isinstance(table["log_sql"], bool):
            raise ScenarioError(f"{where}.log_sql: must be true or false")
        values["log_sql"] = table["log_sql"]
    if "rate_limits" in table:
        try:
            parse_limits(str(table["rate_limits"]))
        except ValueError as exc:
            raise ScenarioError(f"{where}.rate_limits: {exc}") from None
        values["rate_limits"] = str(table["rate_limits"])
    for name in ("worker_failpoints", "api_failpoints"):
        if name in table:
            try:
                failpoints.parse_spec(str(table[name]))
            except ValueError as exc:
                raise ScenarioError(f"{where}.{name}: {exc}") from None
            values[name] = str(table[name])
    services = Services(**values)
    problem = lease_problem(services.lease_s, services.mitto_timeout_s)
    if problem:
        raise ScenarioError(f"{where}.lease_s: {problem} (mitto_timeout_s)")
    return services


def _workload(table: Any) -> Workload:
    where = "scenario.workload"
    table = _check_keys(where, table, set(Workload.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "duration_s": lambda w, v: _float(w, v, 1.0),
            "shops": lambda w, v: _int(w, v, 1),
            "contacts_per_shop": lambda w, v: _int(w, v, 1),
            "customers_per_shop": lambda w, v: _int(w, v, 0),
            "clients": lambda w, v: _int(w, v, 1),
            "client_timeout_s": lambda w, v: _float(w, v, 0.1),
            "credits_per_shop": lambda w, v: _int(w, v, 0),
            "duplicate_enqueue": lambda w, v: _float(w, v, 0.0, 1.0),
            "retries": lambda w, v: _int(w, v, 0),
            "consent_before_redact": lambda w, v: _float(w, v, 0.0, 1.0),
            "think_s": _range,
            "uninstall_last_shop": _bool,
        },
    )
    if "mix" in table:
        mix = _check_keys(f"{where}.mix", table["mix"], set(OPERATIONS))
        weights = dict(Workload().mix)
        weights.update({name: _float(f"{where}.mix.{name}", value) for name, value in mix.items()})
        if weights["campaign"] <= 0:
            raise ScenarioError(f"{where}.mix.campaign: must be > 0 (campaigns are what the lab checks)")
        values["mix"] = tuple(weights.items())
    if "noisy" in table:
        values["noisy"] = _noisy(table["noisy"])
    return Workload(**values)


def _noisy(table: Any) -> Noisy:
    where = "scenario.workload.noisy"
    table = _check_keys(where, table, set(Noisy.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "clients": lambda w, v: _int(w, v, 0),
            "import_rows": lambda w, v: _int(w, v, 1),
            "timeout_s": lambda w, v: _float(w, v, 0.1),
            "think_s": _range,
        },
    )
    if values.get("import_rows", 0) > MAX_CONTACTS_PER_REQUEST:
        raise ScenarioError(f"{where}.import_rows: at most {MAX_CONTACTS_PER_REQUEST} (the API's limit)")
    if "mix" in table:
        mix = _check_keys(f"{where}.mix", table["mix"], set(NOISY_OPERATIONS))
        weights = dict(Noisy().mix)
        weights.update({name: _float(f"{where}.mix.{name}", value) for name, value in mix.items()})
        if not any(weights.values()):
            raise ScenarioError(f"{where}.mix: some weight must be > 0")
        values["mix"] = tuple(weights.items())
    return Noisy(**values)


def _simulator(table: Any) -> SimulatorPlan:
    where = "scenario.simulator"
    table = _check_keys(where, table, {"dlr_delay_ms", "dlr_final", "faults", "providers_give_up"})
    values: dict[str, Any] = {}
    if "dlr_delay_ms" in table:
        values["dlr_delay_ms"] = _float(f"{where}.dlr_delay_ms", table["dlr_delay_ms"])
    if "dlr_final" in table:
        try:
            parse_final_mix(str(table["dlr_final"]))
        except ValueError as exc:
            raise ScenarioError(f"{where}.dlr_final: {str(exc).removeprefix('dlr-final: ')}") from None
        values["dlr_final"] = str(table["dlr_final"])
    faults = table.get("faults", [])
    try:
        parse_rules(faults, "s", where)
    except FaultSpecError as exc:
        raise ScenarioError(str(exc)) from None
    values["faults"] = tuple(faults)
    if "providers_give_up" in table:
        values["providers_give_up"] = _bool(f"{where}.providers_give_up", table["providers_give_up"])
    return SimulatorPlan(**values)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: must be true or false")
    return value


def _minimums(table: Any) -> Minimums:
    where = "scenario.minimums"
    table = _check_keys(where, table, set(Minimums.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "chaos_share": lambda w, v: _float(w, v, 0.0, 1.0),
            "every_nemesis_event": _bool,
            "expected_fires": lambda w, v: _float(w, v, 0.0),
            "campaigns_completed": lambda w, v: _int(w, v, 0),
        },
    )
    return Minimums(**values)


REGRESSION_FIELDS = ("invariant", "found", "fixed_by", "why")
SEED_GAP_FIELDS = ("invariant", "gap", "found", "why")


def _provenance(where: str, table: Any, fields: tuple[str, ...]) -> dict[str, str]:
    """A regression's or a seed gap's account of itself: short strings, naming the invariant it broke."""
    table = _check_keys(where, table, set(fields))
    for name, value in table.items():
        if not isinstance(value, str) or not value:
            raise ScenarioError(f"{where}.{name}: must be a non-empty string")
    if table and not table.get("invariant", "").startswith("I"):
        raise ScenarioError(f"{where}.invariant: must name the invariant it broke (I1..I9)")
    return dict(table)


def _thresholds(table: Any) -> Thresholds:
    where = "scenario.load.thresholds"
    table = _check_keys(where, table, set(Thresholds.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "max_failure_ratio": lambda w, v: _float(w, v, 0.0, 1.0),
            "max_unreachable_ratio": lambda w, v: _float(w, v, 0.0, 1.0),
            "max_shed_ratio": lambda w, v: _float(w, v, 0.0, 1.0),
            "p95_ms": _float,
            "p99_ms": _float,
            "min_rps": _float,
        },
    )
    return Thresholds(**values)


def _stages(items: Any) -> tuple[Stage, ...]:
    if not isinstance(items, list):
        raise ScenarioError("scenario.load.stages: must be a list of {duration_s, users, spawn_rate} tables")
    stages = []
    for index, table in enumerate(items):
        where = f"scenario.load.stages[{index}]"
        table = _check_keys(where, table, set(Stage.__dataclass_fields__))
        missing = sorted(set(Stage.__dataclass_fields__) - set(table))
        if missing:
            raise ScenarioError(f"{where}.{missing[0]}: is required")
        stages.append(
            Stage(
                duration_s=_float(f"{where}.duration_s", table["duration_s"], 1.0),
                users=_int(f"{where}.users", table["users"], 0),
                spawn_rate=_float(f"{where}.spawn_rate", table["spawn_rate"], 0.1),
            )
        )
    return tuple(stages)


def _load(table: Any) -> LoadPlan:
    where = "scenario.load"
    table = _check_keys(where, table, set(LoadPlan.__dataclass_fields__))
    values = _from_casters(
        where,
        table,
        {
            "duration_s": lambda w, v: _float(w, v, 1.0),
            "users": lambda w, v: _int(w, v, 1),
            "spawn_rate": lambda w, v: _float(w, v, 0.1),
            "processes": lambda w, v: _int(w, v, 0),
            "warmup_campaigns": lambda w, v: _int(w, v, 0),
            "think_s": _range,
            "thresholds": lambda _w, v: _thresholds(v),
            "stages": lambda _w, v: _stages(v),
        },
    )
    if "user_classes" in table:
        classes = _check_keys(f"{where}.user_classes", table["user_classes"], set(USER_CLASSES))
        weights = dict(LoadPlan().user_classes)
        weights.update({name: _float(f"{where}.user_classes.{name}", v) for name, v in classes.items()})
        if not any(weights.values()):
            raise ScenarioError(f"{where}.user_classes: some weight must be > 0")
        values["user_classes"] = tuple(weights.items())
    return LoadPlan(**values)


def _nemesis(items: Any) -> tuple[NemesisRule, ...]:
    if not isinstance(items, list):
        raise ScenarioError("scenario.nemesis: must be a list of [[nemesis]] tables")
    rules = []
    for index, table in enumerate(items):
        where = f"scenario.nemesis[{index}]"
        table = _check_keys(
            where, table, {"action", "every_s", "at_s", "restart_after_s", "duration_s", "proxy", "toxic"}
        )
        action = table.get("action")
        if action not in NEMESIS_ACTIONS:
            raise ScenarioError(f"{where}.action: must be one of {', '.join(NEMESIS_ACTIONS)}")
        if ("every_s" in table) == ("at_s" in table):
            raise ScenarioError(f"{where}: give exactly one of every_s = [low, high] or at_s = seconds")
        rule = NemesisRule(
            action=action,
            every_s=_range(f"{where}.every_s", table["every_s"]) if "every_s" in table else None,
            at_s=_float(f"{where}.at_s", table["at_s"]) if "at_s" in table else None,
            restart_after_s=_range(f"{where}.restart_after_s", table.get("restart_after_s", [0.5, 1.5])),
            duration_s=_float(f"{where}.duration_s", table.get("duration_s", 2.0), 0.1),
        )
        if action == "toxic":
            if table.get("proxy") not in PROXIES:
                raise ScenarioError(f"{where}.proxy: must be one of {', '.join(PROXIES)}")
            try:
                Toxic.parse(table.get("toxic"), f"{where}.toxic")
            except ToxicError as exc:
                raise ScenarioError(str(exc)) from None
            rule = replace(rule, proxy=table["proxy"], toxic=dict(table["toxic"]))
        rules.append(rule)
    return tuple(rules)


def parse_scenario(document: Any, source: str = "") -> Scenario:
    table = _check_keys(
        "scenario",
        document,
        {
            "name",
            "description",
            "seed",
            "quiescence_s",
            "latency_bound_s",
            "backend",
            "services",
            "workload",
            "simulator",
            "nemesis",
            "minimums",
            "regression",
            "seed_gap",
            "load",
        },
    )
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("scenario.name: is required")
    backend = table.get("backend", "any")
    if backend not in ("any", "postgresql"):
        raise ScenarioError("scenario.backend: must be any or postgresql")
    scenario = Scenario(
        name=name,
        description=str(table.get("description", "")),
        seed=_int("scenario.seed", table.get("seed", 0)),
        quiescence_s=_float("scenario.quiescence_s", table.get("quiescence_s", 30.0), 1.0),
        latency_bound_s=_float("scenario.latency_bound_s", table.get("latency_bound_s", 2.0), 0.01),
        backend=backend,
        services=_services(table.get("services", {})),
        workload=_workload(table.get("workload", {})),
        simulator=_simulator(table.get("simulator", {})),
        nemesis=_nemesis(table.get("nemesis", [])),
        minimums=_minimums(table.get("minimums", {})),
        regression=_provenance("scenario.regression", table.get("regression", {}), REGRESSION_FIELDS),
        seed_gap=_provenance("scenario.seed_gap", table.get("seed_gap", {}), SEED_GAP_FIELDS),
        load=_load(table.get("load", {})),
        source=source,
        document=copy.deepcopy(table),
    )
    if backend != "postgresql":
        for index, rule in enumerate(scenario.nemesis):
            if rule.action == "cut_db_connections":
                raise ScenarioError(
                    f"scenario.nemesis[{index}].action: cut_db_connections needs backend = "
                    '"postgresql" (SQLite has no connections to cut)'
                )
            if rule.proxy == "db":
                raise ScenarioError(
                    f'scenario.nemesis[{index}].proxy: the db proxy needs backend = "postgresql" '
                    "(SQLite has no database link)"
                )
    return scenario


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario by name (chaos/scenarios/NAME.toml) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIOS_DIR / f"{name_or_path}.toml"
    try:
        source = path.read_text()
    except OSError:
        known = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml")))
        raise ScenarioError(f"scenario: no scenario {name_or_path!r} (known: {known})") from None
    try:
        document = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario: {path.name} is not valid TOML: {exc}") from None
    return parse_scenario(document, source)
