"""The notebooks and `smslab report`: each notebook executes top to bottom on a real run folder (a short
real run, once per session), on a hand-made folder with a violation, on a folder missing files, on a
matrix and on Locust's CSVs; the figures exist and are not empty; a notebook that raises fails."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nbformat
import pytest

from chaos import notebooks
from chaos.runlab import RunFolder
from tests.test_lab import TINY, invariants, smslab

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUN_FIGURES = {"timeline", "reconciler", "verdict", "money"}


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height from its header (and proof that it is one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_figures(folder: Path, names: set[str]) -> None:
    written = {p.stem for p in (folder / "report").glob("*.png")}
    assert names <= written, f"missing figures: {names - written}"
    for name in names:
        path = folder / "report" / f"{name}.png"
        width, height = png_size(path)
        assert width > 300
        assert height > 100
        assert path.stat().st_size > 5_000, f"{path} looks empty"


def report(folder: Path) -> str:
    done = smslab("report", str(folder), cwd=folder.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report: " in done.stdout
    return (folder / "report.html").read_text()


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run (a worker killed, answers lost), reported by `smslab run --report`."""
    where = tmp_path_factory.mktemp("notebooks")
    (where / "tiny.toml").write_text(TINY)
    done = smslab("run", "tiny.toml", "--out", "runs", "--report", cwd=where)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (where / "runs" / "latest").resolve()


@pytest.fixture(scope="session")
def violated_run(real_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real run's folder with a double send put into Mitto's ledger, checked again: I1 invalid."""
    folder = tmp_path_factory.mktemp("violated") / real_run.name
    shutil.copytree(real_run, folder, ignore=shutil.ignore_patterns("report*"))
    ledger = folder / "simulator" / "mitto_accepted.jsonl"
    first = json.loads(ledger.read_text().splitlines()[0])
    again = {**first, "seq": 10**6, "message_id": "00000000-0000-0000-0000-00000000dead", "t": first["t"] + 1}
    with ledger.open("a") as handle:
        handle.write(json.dumps(again) + "\n")
    checked = smslab("check", str(folder), cwd=folder.parent)
    assert checked.returncode == 1
    assert invariants(folder)["I1"] is False
    return folder


def test_a_real_run_reports_every_figure_with_no_code_shown(real_run: Path) -> None:
    html = (real_run / "report.html").read_text()
    assert_figures(real_run, RUN_FIGURES)
    assert "every invariant holds" in html
    assert "figures.timeline" not in html  # no code cells by default
    assert "Missing from this run folder" not in html
    passes = RunFolder.open(real_run).reconcile_passes
    assert len(passes) > 0  # the reconciler's rows came with the snapshot
    assert (passes["duration_s"] >= 0).all()


def test_a_violation_is_shown_with_its_witness_joined_to_the_rows_it_names(violated_run: Path) -> None:
    html = report(violated_run)
    assert_figures(violated_run, RUN_FIGURES)
    assert "INVALID" in html
    assert "I1</strong> witness" in html
    assert "<em>acceptances</em>" in html
    assert "00000000dead" in html  # both acceptances, joined to the witness


def test_a_folder_missing_files_gets_a_report_that_names_them(real_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(real_run, folder, ignore=shutil.ignore_patterns("report*"))
    for name in ("history.jsonl", "database/ledger.jsonl", "database/reconcile_passes.jsonl", "verdict.json"):
        (folder / name).unlink()
    html = report(folder)
    assert "Missing from this run folder" in html
    for name in ("history.jsonl", "database/ledger.jsonl", "database/reconcile_passes.jsonl"):
        assert f"<code>{name}</code>" in html
    assert "Traceback" not in html
    assert_figures(folder, RUN_FIGURES)


def test_the_matrix_report_outlines_expectations_and_links_each_run(
    real_run: Path, violated_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "matrix"
    folder.mkdir()
    for run in (real_run, violated_run):
        shutil.copytree(
            run, folder / f"{run.parent.name}-{run.name}", ignore=shutil.ignore_patterns("report*")
        )
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
    every_valid = {f"I{n}": True for n in range(1, 10)}
    rows = [
        {
            "kind": "all_on",
            "safeguard": None,
            "number": None,
            "scenario": "tiny",
            "expected": "all valid",
            "verdicts": invariants(runs[0]),
            "as_expected": True,
            "run": str(runs[0]),
            "note": "",
        },
        {
            "kind": "safeguard_off",
            "safeguard": "claim_before_send",
            "number": 3,
            "scenario": "tiny",
            "expected": "I1",
            "verdicts": invariants(runs[1]),
            "as_expected": True,
            "run": str(runs[1]),
            "note": "",
        },
        {
            "kind": "safeguard_off",
            "safeguard": "reconciler",
            "number": 8,
            "scenario": "tiny",
            "expected": "I2",
            "verdicts": every_valid,
            "as_expected": False,
            "run": "/gone/elsewhere",
            "note": "",
        },
    ]
    (folder / "matrix.json").write_text(json.dumps({"as_expected": False, "short": True, "rows": rows}))
    html = report(folder)
    assert_figures(folder, {"matrix", "compare", "compare-verdicts"})
    assert "NOT AS EXPECTED" in html
    assert f'href="{runs[0].name}' in html  # each run folder linked, relative to the report
    assert "2 runs" in html  # compare.ipynb over the matrix's run folders


LOCUST_COLUMNS = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)


def test_the_load_notebook_reads_locusts_csvs(real_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "load"
    shutil.copytree(real_run, folder, ignore=shutil.ignore_patterns("report*"))
    start = int(json.loads((folder / "run.json").read_text())["clock"]["chaos_started_at"])
    lines = [LOCUST_COLUMNS]
    for i in range(12):
        for kind, name, rate in (
            ("GET", "/api/wallet", 20 + i),
            ("POST", "/api/campaigns", 5),
            ("", "Aggregated", 25 + i),
        ):
            p50, p95 = ("N/A", "N/A") if i == 0 else (12 + i, 40 + 3 * i)
            lines.append(
                f"{start + i},4,{kind},{name},{rate},{0.5 if i > 6 else 0},{p50},14,15,16,20,{p95},50,"
                f"{p95},90,90,95,{rate * i},{i},12,14.0,3,95,120"
            )
    (folder / "load_stats_history.csv").write_text("\n".join(lines) + "\n")
    (folder / "load_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/api/campaigns,\"HTTPError('503')\",4\n"
    )
    html = report(folder)
    assert_figures(folder, RUN_FIGURES | {"load"})
    assert "HTTPError" in html


def test_a_notebook_that_raises_fails_the_report(
    real_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = notebooks.read_notebook(NOTEBOOKS / "run.ipynb")
    broken.cells.append(notebooks.new_code_cell("raise ValueError('a figure that cannot be drawn')"))
    (tmp_path / "nb").mkdir()
    notebooks.write_notebook(broken, tmp_path / "nb" / "run.ipynb")
    monkeypatch.setattr(notebooks, "NOTEBOOKS_DIR", tmp_path / "nb")
    folder = tmp_path / "run"
    shutil.copytree(real_run, folder, ignore=shutil.ignore_patterns("report*"))
    with pytest.raises(notebooks.ReportError, match="a figure that cannot be drawn"):
        notebooks.build_report(folder)
    assert "a figure that cannot be drawn" in (folder / "report.html").read_text()  # what ran, error shown


def test_a_folder_the_notebooks_cannot_read_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    done = smslab("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "is not a run folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_notebooks_are_committed_without_outputs_each_with_a_parameters_cell() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["compare.ipynb", "load.ipynb", "matrix.ipynb", "run.ipynb"]
    for name in names:
        nb = notebooks.read_notebook(NOTEBOOKS / name)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: one cell tagged `parameters`"
        assert "injected-parameters" not in json.dumps([c.metadata for c in code])
