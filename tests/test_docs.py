"""The docs name every setting, safeguard and failpoint the code has, so they cannot drift apart silently."""

from __future__ import annotations

from service import failpoints, safeguards
from service.settings import _PARSERS, env_name
from tests.support.infra import ROOT


def test_every_setting_is_documented() -> None:
    documented = (ROOT / "docs" / "settings.md").read_text()
    missing = [env_name(name) for name in _PARSERS if f"`{env_name(name)}`" not in documented]
    assert missing == []


def test_every_safeguard_and_failpoint_is_documented() -> None:
    documented = (ROOT / "docs" / "safeguards.md").read_text()
    assert [name for name in safeguards.REGISTRY if f"`{name}`" not in documented] == []
    assert [point for point in failpoints.POINTS if f"`{point}`" not in documented] == []


def test_readme_shows_the_two_fresh_machine_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/smslab run quick" in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest -n auto" in readme


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_relative_links_in_the_docs_resolve() -> None:
    import re

    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_lab_guide_names_every_scenario_and_fault_action() -> None:
    from chaos.scenario import NEMESIS_ACTIONS, SCENARIOS_DIR

    guide = (ROOT / "docs" / "lab.md").read_text()
    scenarios = sorted(path.stem for path in SCENARIOS_DIR.glob("*.toml"))
    assert [name for name in scenarios if f"| `{name}` |" not in guide] == []
    assert [action for action in NEMESIS_ACTIONS if action not in guide] == []
    assert "## The safeguard matrix" in guide
