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
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/smslab up" in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest -n auto" in readme
