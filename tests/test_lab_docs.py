"""docs/lab.md's scenario format is what `parse_scenario` accepts: each marked TOML block parses as it
stands, and what the guide calls a default is the code's default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import pytest

from chaos.scenario import Scenario, ScenarioError, parse_scenario
from tests.support.infra import ROOT

GUIDE = ROOT / "docs" / "lab.md"
# A block the guide vouches for: the marker comment, then the fence, on the next line.
BLOCK = re.compile(r"^<!-- scenario-format: (defaults|example) -->\n```toml\n(.*?)^```$", re.M | re.S)
# `key = value   # default: ...`: a line the guide says could be left out.
DEFAULT_LINE = re.compile(r"^[ \t]*[\w.]+[ \t]*=[^#\n]*#[ \t]*default\b.*$", re.M)


def blocks(kind: str) -> list[str]:
    return [text for found, text in BLOCK.findall(GUIDE.read_text()) if found == kind]


def differences(documented: Any, default: Any, where: str = "scenario") -> list[str]:
    """Field by field, so a failure names the field the guide has wrong."""
    if dataclasses.is_dataclass(documented) and not isinstance(documented, type):
        found = []
        for item in dataclasses.fields(documented):
            if item.compare:
                found += differences(
                    getattr(documented, item.name), getattr(default, item.name), f"{where}.{item.name}"
                )
        return found
    return [] if documented == default else [f"{where}: the guide says {documented!r}, the code {default!r}"]


def test_the_guide_marks_its_format_blocks() -> None:
    assert len(blocks("defaults")) == 1
    assert len(blocks("example")) >= 2


def test_the_defaults_block_parses_as_it_stands_and_each_value_is_the_codes_default() -> None:
    (text,) = blocks("defaults")
    document = tomllib.loads(text)
    scenario = parse_scenario(document)
    assert differences(scenario, Scenario(name=document["name"])) == []


def fields_of(value: Any, where: str = "") -> set[str]:
    """Every field a scenario file can set, as dotted paths (the rule lists and bookkeeping left out)."""
    found: set[str] = set()
    for item in dataclasses.fields(value):
        path = f"{where}{item.name}"
        inner = getattr(value, item.name)
        # the rule lists are shown by the examples, `regression` and `seed_gap` by the swarm section's
        if path in {"source", "document", "nemesis", "simulator.faults", "regression", "seed_gap"}:
            continue
        if dataclasses.is_dataclass(inner):
            found |= fields_of(inner, f"{path}.")
        elif path in ("workload.mix", "workload.noisy.mix", "load.user_classes"):
            found |= {f"{path}.{operation}" for operation, _ in inner}
        else:
            found.add(path)
    return found


def keys_of(table: dict[str, Any], where: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in table.items():
        found |= keys_of(value, f"{where}{key}.") if isinstance(value, dict) else {f"{where}{key}"}
    return found


def test_the_defaults_block_names_every_field_the_code_has() -> None:
    """A field added to the code and not to the guide fails here, naming it."""
    (text,) = blocks("defaults")
    documented, known = keys_of(tomllib.loads(text)), fields_of(Scenario(name="x"))
    assert sorted(known - documented) == []
    assert sorted(documented - known) == []


def test_name_is_the_one_required_field() -> None:
    (text,) = blocks("defaults")
    assert re.search(r"^name = .*# required\b", text, re.M)
    document = tomllib.loads(text)
    del document["name"]
    with pytest.raises(ScenarioError, match=r"^scenario\.name: is required$"):
        parse_scenario(document)
    assert parse_scenario({"name": "bare"}) == Scenario(name="bare")


@pytest.mark.parametrize("index", range(len(blocks("example"))))
def test_each_example_parses_and_its_lines_marked_default_change_nothing(index: int) -> None:
    text = blocks("example")[index]
    scenario = parse_scenario(tomllib.loads(text))
    stripped = DEFAULT_LINE.sub("", text)
    assert differences(parse_scenario(tomllib.loads(stripped)), scenario) == []


def test_the_postgresql_example_is_refused_on_any_backend() -> None:
    """What the guide says of the db faults: without backend = "postgresql" the scenario is refused."""
    (text,) = [text for text in blocks("example") if 'backend = "postgresql"' in text]
    document = tomllib.loads(text)
    assert {rule["action"] for rule in document["nemesis"]} == {"cut_db_connections", "toxic"}
    for rule in document["nemesis"]:
        alone = {"name": "alone", "nemesis": [rule]}
        parse_scenario({**alone, "backend": "postgresql"})
        with pytest.raises(
            ScenarioError, match=r'^scenario\.nemesis\[0\]\.(action|proxy): .*needs backend = "postgresql"'
        ):
            parse_scenario(alone)
    for other in [text for text in blocks("example") if 'backend = "postgresql"' not in text]:
        assert parse_scenario(tomllib.loads(other)).backend == "any"


def test_the_guides_example_of_a_refusal_is_the_tools() -> None:
    line = "scenario.workload.clients: must be a whole number >= 1"
    assert f"`{line}`" in " ".join(GUIDE.read_text().split())
    with pytest.raises(ScenarioError) as refused:
        parse_scenario({"name": "x", "workload": {"clients": 0}})
    assert str(refused.value) == line
