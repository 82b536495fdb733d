"""The alert rules are valid Prometheus rules about metrics the service really exports, and each one
leads an operator to a runbook that names it.

An alert on a metric name nobody exports never fires, silently; an alert whose runbook link is dead or
whose runbook never mentions it leaves the operator alone at 3 a.m. So: the rules file parses as
Prometheus rules (and passes `promtool check rules` where promtool is installed); every metric an alert
or a runbook's PromQL names, with every label it matches on, is in a real `/metrics` scrape of a live
service after a small workload; every `runbook_url` resolves to a runbook and a heading of it; and the
alerts and the runbooks' tables name each other both ways.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.lab import Lab
from tests.support.live import live_service
from tests.support.runbooks import (
    ALERTS_FILE,
    RUNBOOKS_DIR,
    Runbook,
    alert_rules,
    label_matchers,
    metric_names,
    runbooks,
)

REQUIRED = {
    "SmslabStuckCampaigns",
    "SmslabQueueBacklog",
    "SmslabJobFailures",
    "SmslabWebhookFailures",
    "SmslabWebhookRejected",
    "SmslabWalletsOutOfBalance",
    "SmslabTenantRateLimited",
    "SmslabRateLimiterUnavailable",
    "SmslabDoubleSendSuspected",
    "SmslabPersonalDataInLogs",
    "SmslabApiOverloaded",
}
DURATION = re.compile(r"^\d+[smhd]$")


def _runbook_of(url: str) -> tuple[Runbook, str]:
    path, _, heading = url.partition("#")
    target = (RUNBOOKS_DIR.parents[1] / path).resolve()
    assert target.parent == RUNBOOKS_DIR.resolve(), f"{url} is not a runbook under docs/runbooks/"
    assert target.is_file(), f"{url}: no such runbook"
    return Runbook(target, target.read_text()), heading


def test_the_rules_file_has_every_alert_with_what_prometheus_and_an_operator_need() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), f"an alert named twice: {names}"
    assert set(names) >= REQUIRED, f"missing: {sorted(REQUIRED - set(names))}"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str), rule["alert"]
        assert metric_names(rule["expr"]), rule["alert"]
        assert DURATION.match(str(rule["for"])), f"{rule['alert']}: for {rule['for']!r}"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert all(str(annotations[k]).strip() for k in ("summary", "description")), rule["alert"]


def test_every_runbook_url_points_at_a_runbook_and_a_heading_of_it() -> None:
    for rule in alert_rules():
        runbook, heading = _runbook_of(rule["annotations"]["runbook_url"])
        assert heading, f"{rule['alert']}: runbook_url names no heading"
        assert heading in runbook.anchors(), f"{rule['alert']}: {runbook.path.name} has no #{heading}"


def test_alerts_and_runbooks_name_each_other() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, rule in rules.items():
        runbook, _ = _runbook_of(rule["annotations"]["runbook_url"])
        assert name in runbook.alerts(), f"{runbook.path.name}'s Alerts row does not name {name}"
    for runbook in runbooks():
        assert runbook.alerts(), f"{runbook.path.name} names no alert"
        for name in runbook.alerts():
            assert name in rules, f"{runbook.path.name} names {name}, which alerts.yml does not define"
            pointed = _runbook_of(rules[name]["annotations"]["runbook_url"])[0].path
            assert pointed == runbook.path, f"{name} is in {runbook.path.name} but points at {pointed.name}"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not on PATH (Prometheus' own check)"
)
def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


@pytest.mark.webhooks_to_api
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # metric names do not depend on it
async def test_every_metric_the_alerts_and_runbooks_use_is_in_a_real_scrape(lab: Lab, tmp_path: Path) -> None:
    async with live_service(lab, tmp_path) as service:
        scraped = await service.scrape()
    labels_of: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            labels_of.setdefault(sample.name, set()).update(sample.labels)
    expressions = {f"alerts.yml {rule['alert']}": str(rule["expr"]) for rule in alert_rules()}
    for runbook in runbooks():
        for index, promql in enumerate(runbook.code_spans("PromQL")):
            expressions[f"{runbook.path.name} PromQL {index + 1}"] = promql
        for index, name in enumerate(runbook.code_spans("Metrics")):
            expressions[f"{runbook.path.name} Metrics {index + 1}"] = name
    missing, unlabelled = [], []
    for where, expression in expressions.items():
        for name in metric_names(expression):
            # A histogram is named by its family in the tables and by its samples in PromQL.
            if name not in labels_of and f"{name}_bucket" not in labels_of:
                missing.append(f"{where}: {name}")
        for name, label in label_matchers(expression):
            if label not in labels_of.get(name, set()):
                unlabelled.append(f"{where}: {name} has no label {label}")
    assert missing == [], "not in the service's /metrics after the workload"
    assert unlabelled == []
