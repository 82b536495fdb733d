"""run.json's commit says `-dirty` only when the code that ran differs from it: what runs leave behind
(run folders, logs, caches) is untracked and ignored, and does not count. Each test works on a git
repository of its own under tmp_path, never on this checkout's state."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from chaos.environment import ROOT, project_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

# What a run, a test session or the CI gate leaves in the checkout.
LEFT_BEHIND = (
    "runs/latest",
    "runs/20260101-000000-quick-s42-abcd/logs/api.log",
    "var/smslab.db",
    "var/logs/worker-0.log",
    ".ci-runs/matrix/matrix.json",
    ".ci-venv/bin/python",
    ".schemathesis/report.json",
    ".hypothesis/examples/x",
    "docs/runs/latest",  # `smslab run` from a subfolder
    "simulator.log",
)


def git(repo: Path, *args: str) -> str:
    identity = ("-c", "user.name=lab", "-c", "user.email=lab@example.invalid", "-c", "commit.gpgsign=false")
    done = subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-commit repository with this project's .gitignore (git looks no higher than tmp_path)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    repo = tmp_path / "clone"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "code.py").write_text("x = 1\n")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    git(repo, "add", "code.py", ".gitignore")
    git(repo, "commit", "--quiet", "-m", "first")
    return repo


def touch(repo: Path, relative: str) -> None:
    path = repo / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("left behind\n")


def test_a_clean_tree_gives_the_bare_commit(repo: Path) -> None:
    assert project_commit(repo) == git(repo, "rev-parse", "HEAD")


def test_untracked_files_do_not_make_a_run_dirty(repo: Path) -> None:
    for relative in LEFT_BEHIND:
        touch(repo, relative)
    touch(repo, "notes.txt")  # untracked and not ignored: still not code that ran
    assert project_commit(repo) == git(repo, "rev-parse", "HEAD")


def test_a_changed_or_staged_tracked_file_does(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    (repo / "code.py").write_text("x = 2\n")
    assert project_commit(repo) == f"{head}-dirty"
    git(repo, "checkout", "--quiet", "code.py")  # the temporary repository, not this checkout
    touch(repo, "new.py")
    git(repo, "add", "new.py")
    assert project_commit(repo) == f"{head}-dirty"


def test_no_checkout_or_no_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "installed"
    plain.mkdir()
    assert project_commit(plain) == "unknown"
    git(plain, "init", "--quiet")
    assert project_commit(plain) == "unknown"


def test_the_gitignore_ignores_what_runs_leave_behind(repo: Path) -> None:
    for relative in LEFT_BEHIND:
        touch(repo, relative)
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
