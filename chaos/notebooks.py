"""`smslab report`: the notebooks in `notebooks/` executed on a run folder, written as one HTML report.

Why nbclient rather than papermill underneath: papermill is nbclient plus parameter injection and
progress bars; injection is a few lines here (papermill's convention, so papermill runs the same
notebooks by hand: the cell tagged `parameters` is followed by one tagged `injected-parameters`), and
one dependency fewer means one kernel-resolution path fewer. The kernel is always this interpreter
(`sys.executable -m ipykernel_launcher`), named by a kernel spec made here, so a fresh virtualenv needs
no `ipykernel install` and a `python3` kernel registered elsewhere on the machine is never picked up.

The report: `report.html` (the executed notebooks, code cells hidden unless asked for) and each figure
as a PNG under `report/` (a cell tagged `figure:NAME` gives `report/NAME.png`). A cell that raises
fails the report (CI relies on it), after writing what ran, error included, to `report.html`.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
import time
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

from chaos.runlab import LOCUST_HISTORY, is_run_folder, run_folders_in

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "smslab-python"
CELL_TIMEOUT_S = 300
REPORT_HTML = "report.html"
FIGURES_DIR = "report"


class ReportError(Exception):
    """The report could not be made: one line for the user, no traceback."""


class _ThisPython(KernelSpecManager):
    """Kernel specs that all name this interpreter: the notebooks run where smslab is installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"smslab ({sys.executable})",
            language="python",
            resource_dir=str(NOTEBOOKS_DIR),
            env={"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
        )


@dataclass
class Report:
    html: Path
    figures: list[Path] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def read_notebook(path: Path) -> Any:
    """nbformat's reader, typed (nbformat's own functions are not)."""
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def write_notebook(nb: Any, path: Path) -> None:
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]


def new_code_cell(source: str, tags: list[str] | None = None) -> Any:
    cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
    if tags:
        cell.metadata["tags"] = tags
    return cell


def notebooks_for(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """The notebooks that fit a folder, with their parameters: a run folder gets run.ipynb (and
    load.ipynb when Locust's files are there); a matrix folder matrix.ipynb then compare.ipynb over its
    runs; a folder of run folders compare.ipynb."""
    folder = folder.resolve()
    if (folder / "matrix.json").exists():
        return [("matrix.ipynb", {"matrix_dir": str(folder)}), ("compare.ipynb", {"folder": str(folder)})]
    if is_run_folder(folder):
        chosen: list[tuple[str, dict[str, Any]]] = []
        if any((folder / name).exists() for name in ("run.json", "verdict.json", "history.jsonl")):
            chosen.append(("run.ipynb", {"run_dir": str(folder)}))
        if (folder / LOCUST_HISTORY).exists():
            chosen.append(("load.ipynb", {"run_dir": str(folder)}))
        return chosen
    if folder.is_dir() and run_folders_in(folder):
        return [("compare.ipynb", {"folder": str(folder)})]
    raise ReportError(
        f"{folder} is not a run folder: no run.json, verdict.json, history.jsonl, {LOCUST_HISTORY} or "
        "matrix.json in it, and no run folder inside it"
    )


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> Any:
    """Papermill's convention: a cell tagged `injected-parameters` right after the one tagged
    `parameters`, overriding its defaults (at the top if no cell is tagged)."""
    lines = ["# Parameters"] + [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = new_code_cell("\n".join(lines), ["injected-parameters"])
    cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    at = next((i + 1 for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), 0)
    nb.cells = [*cells[:at], cell, *cells[at:]]
    return nb


def execute(name: str, parameters: dict[str, Any], timeout_s: int = CELL_TIMEOUT_S) -> tuple[Any, str | None]:
    """One notebook executed with its parameters in a kernel of this interpreter. Returns the executed
    notebook and, if a cell raised, what it raised (the notebook then holds the cells up to it)."""
    path = NOTEBOOKS_DIR / name
    if not path.exists():
        raise ReportError(f"{path} not found (the notebooks ship with the source tree: pip install -e .)")
    nb = inject_parameters(read_notebook(path), parameters)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=_ThisPython())
    # The kernel imports `chaos` from this interpreter's environment; the project root first, so a
    # source checkout's own code is used even where smslab is not installed editable.
    env_path = os.pathsep.join(p for p in (str(NOTEBOOKS_DIR.parent), os.environ.get("PYTHONPATH")) if p)
    client = NotebookClient(
        nb,
        km=manager,
        timeout=timeout_s,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
        kernel_name=KERNEL_NAME,
    )
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path
    try:
        client.execute()
    except CellExecutionError as exc:
        first = str(exc).strip().splitlines()
        reason = next((line for line in reversed(first) if line.strip()), "a cell raised")
        return nb, f"{name}: {reason}"
    except (RuntimeError, OSError) as exc:  # the kernel would not start or answer
        raise ReportError(f"{name}: the notebook kernel ({sys.executable}) failed: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    return nb, None


def figures_of(nb: Any, out_dir: Path) -> list[Path]:
    """Each figure of a cell tagged `figure:NAME` written as `out_dir/NAME.png` (NAME-2.png, ... for a
    cell with several)."""
    written: list[Path] = []
    for cell in nb.cells:
        names = [t.split(":", 1)[1] for t in cell.metadata.get("tags", []) if t.startswith("figure:")]
        if cell.cell_type != "code" or not names:
            continue
        images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for i, data in enumerate(images):
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / (f"{names[0]}.png" if i == 0 else f"{names[0]}-{i + 1}.png")
            path.write_bytes(base64.b64decode(data))
            written.append(path)
    return written


def build_report(folder: Path, include_code: bool = False) -> Report:
    """Execute the notebooks that fit `folder`, write `folder/report.html` and `folder/report/*.png`.
    Raises ReportError (after writing what ran) if a cell raised."""
    started = time.monotonic()
    folder = folder.resolve()
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    chosen = notebooks_for(folder)
    if not chosen:
        raise ReportError(f"no notebook fits {folder}")
    merged: Any = None
    failures: list[str] = []
    figures_dir = folder / FIGURES_DIR
    report = Report(folder / REPORT_HTML)
    for name, parameters in chosen:
        nb, failure = execute(name, parameters)
        report.figures += figures_of(nb, figures_dir)
        report.notebooks.append(name)
        if failure:
            failures.append(failure)
        if merged is None:
            merged = copy.deepcopy(nb)
        else:
            merged.cells.extend(nb.cells)
    exporter = HTMLExporter(  # type: ignore[no-untyped-call]
        exclude_input=not include_code, exclude_input_prompt=True
    )
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": folder.name}})
    report.html.write_text(body, encoding="utf-8")
    (figures_dir / "index.json").parent.mkdir(parents=True, exist_ok=True)
    (figures_dir / "index.json").write_text(
        json.dumps({"notebooks": report.notebooks, "figures": [p.name for p in report.figures]}, indent=1)
    )
    report.seconds = round(time.monotonic() - started, 2)
    if failures:
        raise ReportError("; ".join(failures) + f" (what ran is in {report.html})")
    return report


def open_in_browser(path: Path) -> None:
    webbrowser.open(path.resolve().as_uri())
