"""One hop from an invariant to everything about it: the safeguard registry's references must hold.

Each safeguard names a test file with its switched-off twin, the checker module that proves its
invariant, and the runbook an operator follows when that invariant fails. A reference to a file that
is gone, or to one that does not speak of the safeguard or its invariant, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from service import safeguards

ROOT = Path(__file__).resolve().parents[1]
INVARIANTS = [f"I{n}" for n in range(1, 10)]


def _constant_of(name: str) -> str:
    """The module-level constant in `service.safeguards` whose value is this safeguard's name."""
    return next(k for k, v in vars(safeguards).items() if k.isupper() and v == name)


def _switches_off(tree: ast.AST, name: str, constant: str) -> bool:
    """Some call in the file switches the safeguard off: `lab.unsafe(safeguards.NAME, ...)`, or a
    `safeguards_off=` / `SMSLAB_SAFEGUARDS_OFF` value naming it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "unsafe":
            for arg in node.args:
                if (isinstance(arg, ast.Attribute) and arg.attr == constant) or (
                    isinstance(arg, ast.Constant) and arg.value == name
                ):
                    return True
                if isinstance(arg, ast.Name):  # a parametrised test: unsafe(safeguard)
                    return True
        if (
            isinstance(node, ast.keyword)
            and node.arg == "safeguards_off"
            and (name in ast.unparse(node.value) or constant in ast.unparse(node.value))
        ):
            return True
    return False


@pytest.mark.parametrize("name", sorted(safeguards.REGISTRY))
def test_each_safeguard_names_a_test_a_checker_and_a_runbook_that_exist_and_mention_it(name: str) -> None:
    entry = safeguards.REGISTRY[name]
    constant = _constant_of(name)
    assert entry.invariant in INVARIANTS, entry

    test_file = ROOT / entry.test
    assert test_file.is_file(), f"{name}: test {entry.test} does not exist"
    source = test_file.read_text()
    assert f"safeguards.{constant}" in source or f'"{name}"' in source, f"{entry.test} never names {name}"
    assert _switches_off(ast.parse(source), name, constant), f"{entry.test} has no test with {name} off"

    checker = ROOT / entry.checker
    assert checker.is_file(), f"{name}: checker {entry.checker} does not exist"
    assert re.search(rf'^ID = "{entry.invariant}"$', checker.read_text(), re.M), (
        f"{entry.checker} does not check {entry.invariant}"
    )

    runbook = ROOT / entry.runbook
    assert runbook.is_file(), f"{name}: runbook {entry.runbook} does not exist"
    assert re.search(rf"^## {entry.invariant}\b", runbook.read_text(), re.M), (
        f"{entry.runbook} has no section for {entry.invariant}"
    )


@pytest.mark.parametrize("invariant", INVARIANTS)
def test_every_invariant_has_a_checker_and_a_runbook_section(invariant: str) -> None:
    checkers = [p for p in (ROOT / "chaos" / "checker").glob(f"{invariant.lower()}_*.py")]
    assert len(checkers) == 1, f"one checker module for {invariant}, found {checkers}"
    sections = [
        p.name
        for p in (ROOT / "docs" / "runbooks").glob("*.md")
        if re.search(rf"^## {invariant}\b", p.read_text(), re.M)
    ]
    assert sections, f"no runbook has a section for {invariant}"
    what = "what the witness means|witness means"
    for name in sections:
        text = (ROOT / "docs" / "runbooks" / name).read_text()
        section = text[re.search(rf"^## {invariant}\b", text, re.M).start() :]  # type: ignore[union-attr]
        section = re.split(r"^## ", section[3:], flags=re.M)[0]
        assert re.search(what, section, re.I), (
            f"{name}'s {invariant} section does not say what its witness means"
        )
        assert re.search("what to look at", section, re.I), f"{name}'s {invariant} section: what to look at"
        assert re.search("what to do", section, re.I), f"{name}'s {invariant} section: what to do"
