"""Simulator scenario files: the seed, time scale, delivery-report behaviour and fault rules of a run.

TOML (or JSON, by extension):

    seed = 7
    time_scale = 0.001
    target = "http://127.0.0.1:8000"     # optional; --target overrides

    [dlr]
    delay_ms = 50
    final = "Delivered=0.9,Undeliverable=0.05,Expired=0.05"

    [[faults]]
    target = "mitto.send"
    kind = "accept_then_lose"
    probability = 0.05

Every problem is refused with the field named (`scenario.faults[1].kind: ...`), before anything starts.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.faults import FaultSpecError, parse_rule, parse_rules
from simulator.mitto import parse_final_mix


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the field."""


@dataclass(frozen=True)
class SimulatorScenario:
    seed: int | None = None
    time_scale: float | None = None
    target: str | None = None
    dlr_delay_ms: float | None = None
    dlr_final: str | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)


TOP_LEVEL = {"seed", "time_scale", "target", "dlr", "faults"}
DLR_KEYS = {"delay_ms", "final"}


def _number(where: str, value: Any, integer: bool = False) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise ScenarioError(f"{where}: must be {'a whole number' if integer else 'a number'}")
    if value < 0:
        raise ScenarioError(f"{where}: must be >= 0")
    return value


def parse_scenario(document: Any, where: str = "scenario") -> SimulatorScenario:
    if not isinstance(document, dict):
        raise ScenarioError(f"{where}: must be a table of settings")
    unknown = sorted(set(document) - TOP_LEVEL)
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(TOP_LEVEL))})")
    seed = _number(f"{where}.seed", document["seed"], integer=True) if "seed" in document else None
    time_scale = _number(f"{where}.time_scale", document["time_scale"]) if "time_scale" in document else None
    target = document.get("target")
    if target is not None and (not isinstance(target, str) or not target.startswith(("http://", "https://"))):
        raise ScenarioError(f"{where}.target: must be an http(s) URL")
    dlr = document.get("dlr", {})
    if not isinstance(dlr, dict):
        raise ScenarioError(f"{where}.dlr: must be a table")
    unknown = sorted(set(dlr) - DLR_KEYS)
    if unknown:
        raise ScenarioError(f"{where}.dlr.{unknown[0]}: unknown field (known: {', '.join(sorted(DLR_KEYS))})")
    delay = _number(f"{where}.dlr.delay_ms", dlr["delay_ms"]) if "delay_ms" in dlr else None
    final = dlr.get("final")
    if final is not None:
        if not isinstance(final, str):
            raise ScenarioError(f"{where}.dlr.final: must be a string such as Delivered=0.9,Expired=0.1")
        try:
            parse_final_mix(final)
        except ValueError as exc:
            raise ScenarioError(f"{where}.dlr.final: {str(exc).removeprefix('dlr-final: ')}") from None
    faults = document.get("faults", [])
    try:
        parse_rules(faults, "f", where)
    except FaultSpecError as exc:
        raise ScenarioError(str(exc)) from None
    return SimulatorScenario(seed, time_scale, target, delay, final, list(faults))


def load_scenario(path: Path) -> SimulatorScenario:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"scenario: cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(
            f"scenario: {path.name} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    return parse_scenario(document)


def parse_fault_flag(text: str, index: int) -> dict[str, Any]:
    """One `--fault` flag: a JSON rule, checked like a scenario's."""
    where = f"--fault[{index}]"
    try:
        rule = json.loads(text)
    except ValueError:
        raise ScenarioError(
            f'{where}: must be a JSON object, e.g. \'{{"target": "mitto.send", "kind": "reset"}}\''
        ) from None
    try:
        parse_rule(rule, f"flag{index}", where)
    except FaultSpecError as exc:
        raise ScenarioError(str(exc)) from None
    return dict(rule)
