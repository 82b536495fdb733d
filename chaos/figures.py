"""The report's figures, drawn from `chaos.runlab` tables: shared by the notebooks, checked by mypy.

Every figure is on the run's time axis (seconds since the chaos phase started) with the fault windows
shaded in one colour per fault class, so a dip or a spike can be read against the fault that caused it.
A table with no rows (a file the run did not leave) draws an axis that says what is missing, never an
exception: a report of a failed run is the one most worth reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from chaos.runlab import (
    OUTCOMES,
    RECIPIENT_STATES,
    RECONCILE_KINDS,
    Matrix,
    RunFolder,
    expected_invalid,
)

OUTCOME_COLOURS = {"ok": "tab:green", "fail": "tab:red", "info": "tab:orange"}
STATE_COLOURS = {
    "pending": "#bdbdbd",
    "sending": "#ffb74d",
    "sent": "#64b5f6",
    "delivered": "#43a047",
    "undelivered": "#8d6e63",
    "expired": "#9575cd",
    "failed": "#e53935",
    "cancelled": "#424242",
}
VERDICT_COLOURS = {"valid": "#43a047", "INVALID": "#e53935", "unknown": "#fdd835"}
PHASE_LINES = ("chaos", "heal", "settle")  # a dotted line where each ends


def fault_colours(classes: Iterable[str]) -> dict[str, Any]:
    """One colour per fault class, stable within a figure set (sorted names onto a qualitative map)."""
    palette = _palette("tab20") + _palette("Dark2")
    return {cls: palette[i % len(palette)] for i, cls in enumerate(sorted(set(classes)))}


def _palette(name: str) -> list[Any]:
    """A qualitative colour map's colours, as a list."""
    cmap = plt.get_cmap(name)
    return list(getattr(cmap, "colors", [cmap(i / 9) for i in range(10)]))


def _nothing(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_yticks([])


def shade_faults(ax: Axes, faults: pd.DataFrame, colours: dict[str, Any]) -> None:
    """The nemesis' fault windows as translucent bands behind a plot (provider faults, moments by the
    hundred, are on the fault timeline only)."""
    for band in faults[faults["source"] == "nemesis"].itertuples():
        end = band.end if band.end > band.start else band.start + 0.2
        ax.axvspan(band.start, end, color=colours[band.cls], alpha=0.18, lw=0)


def mark_phases(ax: Axes, run: RunFolder) -> None:
    for name in PHASE_LINES:
        if name in run.phases:
            ax.axvline(run.phases[name][1], color="grey", ls=":", lw=1)


def fault_timeline(ax: Axes, faults: pd.DataFrame, colours: dict[str, Any], run: RunFolder) -> None:
    """One row per fault class: nemesis faults as bands from start to end, provider faults as ticks."""
    if faults.empty:
        _nothing(ax, "no faults (" + ", ".join(run.missing) + " missing)" if run.missing else "no faults")
        return
    classes = sorted(faults["cls"].unique())
    for row, cls in enumerate(classes):
        mine = faults[faults["cls"] == cls]
        spans = [(s, max(e - s, 0.15)) for s, e in zip(mine["start"], mine["end"], strict=True)]
        ax.broken_barh(spans, (row - 0.4, 0.8), color=colours[cls])
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_ylim(-0.6, len(classes) - 0.4)
    ax.legend(
        handles=[Patch(color=colours[c], label=c) for c in classes],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        title="fault class",
        title_fontsize=8,
    )
    mark_phases(ax, run)
    ax.set_ylabel("faults")


def timeline(run: RunFolder, bin_s: float = 1.0) -> Figure:
    """The run on one time axis: operations per second by outcome, latency quantiles per operation,
    messages accepted and reports applied per second, recipients by status, and the fault timeline."""
    faults = run.faults
    colours = fault_colours(faults["cls"])
    fig, axes = plt.subplots(
        5, 1, figsize=(13, 14), sharex=True, gridspec_kw={"height_ratios": [2, 2, 2, 2, 1.6]}
    )
    ops_ax, lat_ax, pipe_ax, state_ax, fault_ax = axes
    ops = run.ops_per_second(bin_s)
    if ops.empty:
        _nothing(ops_ax, "no operations (history.jsonl missing or empty)")
    else:
        for outcome in OUTCOMES:
            ops_ax.plot(ops.index, ops[outcome], label=outcome, color=OUTCOME_COLOURS[outcome], lw=1.2)
        ops_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="outcome")
    ops_ax.set_ylabel("operations/s")
    ops_ax.set_title(f"{run.title}: client operations, pipeline and faults", loc="left")

    latency = run.latency_quantiles(max(bin_s, 2.0))
    if latency.empty:
        _nothing(lat_ax, "no latencies (history.jsonl missing or empty)")
    else:
        kinds = sorted(latency["f"].unique())
        palette = _palette("tab10")
        for i, kind in enumerate(kinds):
            mine = latency[latency["f"] == kind]
            colour = palette[i % len(palette)]
            lat_ax.plot(mine["t"], mine["p50"], color=colour, lw=1.2, label=f"{kind}")
            lat_ax.plot(mine["t"], mine["p95"], color=colour, lw=0.8, ls="--")
            lat_ax.plot(mine["t"], mine["p99"], color=colour, lw=0.8, ls=":")
        lat_ax.set_yscale("log")
        lat_ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            title="p50 solid, p95 dashed, p99 dotted",
            title_fontsize=7,
        )
    lat_ax.set_ylabel("latency (s)")

    pipeline = run.pipeline_per_second(bin_s)
    if pipeline.empty:
        _nothing(pipe_ax, "no acceptances or reports (simulator/ ledgers missing or empty)")
    else:
        pipe_ax.plot(pipeline.index, pipeline["accepted"], label="messages accepted (Mitto)", lw=1.2)
        pipe_ax.plot(pipeline.index, pipeline["reports applied"], label="delivery reports applied", lw=1.2)
        pipe_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    pipe_ax.set_ylabel("per second")

    states = run.recipients_by_status(bin_s)
    if states.empty:
        _nothing(state_ax, "no recipients (database/ snapshot missing or empty)")
    else:
        state_ax.stackplot(
            states.index,
            *(states[s] for s in RECIPIENT_STATES),
            labels=list(RECIPIENT_STATES),
            colors=[STATE_COLOURS[s] for s in RECIPIENT_STATES],
            alpha=0.9,
        )
        state_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="recipients")
    state_ax.set_ylabel("recipients")

    for ax in (ops_ax, lat_ax, pipe_ax, state_ax):
        shade_faults(ax, faults, colours)
        mark_phases(ax, run)
    fault_timeline(fault_ax, faults, colours, run)
    fault_ax.set_xlabel("seconds since the chaos phase started (dotted: end of chaos, heal, settle)")
    fig.tight_layout()
    return fig


def reconciler(run: RunFolder) -> Figure:
    """The reconciler's passes on the run's time axis: what each pass found and did, stacked by kind,
    over the fault bands; passes that raised marked with a red cross."""
    passes = run.reconcile_passes
    faults = run.faults
    colours = fault_colours(faults["cls"])
    fig, (ax, fault_ax) = plt.subplots(
        2, 1, figsize=(13, 6), sharex=True, gridspec_kw={"height_ratios": [2.5, 1.2]}
    )
    active = [k for k in RECONCILE_KINDS if not passes.empty and passes[k].sum() > 0]
    if passes.empty:
        why = (
            "database/reconcile_passes.jsonl missing"
            if any("reconcile_passes" in m for m in run.missing)
            else "no reconcile pass recorded (reconciler off?)"
        )
        _nothing(ax, why)
    elif not active:
        ax.plot(passes["t"], [0] * len(passes), "|", color="grey", label="a pass with nothing to do")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        palette = _palette("tab20")
        bottom = pd.Series(0.0, index=passes.index)
        width = max(0.3, float(passes["t"].diff().median() or 1.0) * 0.8)
        for i, kind in enumerate(active):
            ax.bar(passes["t"], passes[kind], width=width, bottom=bottom, label=kind, color=palette[i])
            bottom += passes[kind]
        ax.plot(passes["t"], [0] * len(passes), "|", color="grey", ms=4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="per pass")
    if not passes.empty and "error" in passes and passes["error"].notna().any():
        failed = passes[passes["error"].notna()]
        ax.plot(failed["t"], [0] * len(failed), "x", color="red", ms=8, label="pass raised")
    ax.set_ylabel("rows / items per pass")
    ax.set_title(f"{run.title}: what the reconciler found and did", loc="left")
    shade_faults(ax, faults, colours)
    mark_phases(ax, run)
    fault_timeline(fault_ax, faults, colours, run)
    fault_ax.set_xlabel("seconds since the chaos phase started")
    fig.tight_layout()
    return fig


def verdict(run: RunFolder) -> Figure:
    """One coloured cell per invariant (valid, INVALID, unknown) with its first counts."""
    table = run.invariants()
    fig, ax = plt.subplots(figsize=(13, 0.45 * max(len(table), 2) + 0.8))
    if table.empty:
        _nothing(ax, "no verdict (verdict.json missing): `smslab check RUN_DIR` writes one")
        ax.set_xticks([])
        return fig
    for row, item in enumerate(table.itertuples()):
        ax.add_patch(Rectangle((0, row), 1, 0.9, color=VERDICT_COLOURS[item.verdict]))
        ax.text(0.5, row + 0.45, item.verdict, ha="center", va="center", fontsize=8)
        text = f"{item.invariant}   {item.counts[:110]}"
        ax.text(1.1, row + 0.45, text, va="center", fontsize=8)
    ax.set_xlim(0, 12)
    ax.set_ylim(len(table), -0.1)
    ax.set_yticks([r + 0.45 for r in range(len(table))], list(table["id"]))
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    overall = run.verdict.get("valid")
    caption = "every invariant holds" if overall is True else "INVALID" if overall is False else "unknown"
    ax.set_title(f"{run.title}: {caption}", loc="left")
    fig.tight_layout()
    return fig


def money(run: RunFolder) -> Figure:
    """Each shop's balance, reserved credits and debits over time, payments and refunds marked."""
    shops = run.money()
    marks = run.money_marks()
    fig, axes = plt.subplots(max(len(shops), 1), 1, figsize=(13, 3.2 * max(len(shops), 1)), sharex=True)
    axes_list: Sequence[Axes] = list(axes) if len(shops) > 1 else [axes]
    if not shops:
        _nothing(axes_list[0], "no ledger (database/ledger.jsonl missing or empty)")
        return fig
    faults = run.faults
    colours = fault_colours(faults["cls"])
    for ax, (shop_id, frame) in zip(axes_list, shops.items(), strict=True):
        if frame["t"].isna().all():
            _nothing(
                ax, f"shop {shop_id}: the ledger has no timestamps (a snapshot from before they were saved)"
            )
            continue
        ax.step(frame["t"], frame["balance"], where="post", label="balance", lw=1.4)
        ax.step(frame["t"], frame["reserved"], where="post", label="reserved", lw=1.2)
        ax.step(frame["t"], frame["debited"], where="post", label="debited (cumulative)", lw=1.0, ls="--")
        mine = marks[marks["shop_id"] == shop_id]
        for kind, style in (("purchase", ("^", "tab:green")), ("refund", ("v", "tab:red"))):
            points = mine[mine["kind"] == kind]
            if not points.empty:
                at = pd.merge_asof(points.sort_values("t"), frame[["t", "balance"]], on="t")
                label = "payment" if kind == "purchase" else "refund"
                ax.plot(at["t"], at["balance"], style[0], color=style[1], ms=7, label=label)
        shade_faults(ax, faults, colours)
        mark_phases(ax, run)
        ax.set_ylabel(f"shop {shop_id}: credits")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes_list[0].set_title(f"{run.title}: money per shop (from the ledger)", loc="left")
    axes_list[-1].set_xlabel("seconds since the chaos phase started")
    fig.tight_layout()
    return fig


def matrix_heatmap(matrix: Matrix) -> Figure:
    """Rows (a safeguard off, or all on) by invariants: green valid, red invalid, yellow unknown; the
    expected failure outlined in black; a row that did not come out as expected labelled and framed red."""
    grid = matrix.grid()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(grid.columns) + 4), 0.42 * max(len(grid), 2) + 1.6))
    if grid.empty:
        _nothing(ax, "no rows (" + (", ".join(matrix.missing) or "matrix.json empty") + ")")
        return fig
    cmap = ListedColormap([VERDICT_COLOURS["INVALID"], VERDICT_COLOURS["unknown"], VERDICT_COLOURS["valid"]])
    cmap.set_bad("#eeeeee")
    ax.imshow(grid.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), list(grid.columns))
    ax.set_yticks(range(len(grid.index)), list(grid.index), fontsize=8)
    ax.xaxis.tick_top()
    for r, row in enumerate(matrix.rows):
        for invariant in expected_invalid(row):
            if invariant in grid.columns:
                c = list(grid.columns).index(invariant)
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="black", lw=2.5))
        if not row.get("as_expected"):
            ax.get_yticklabels()[r].set_color("red")
            ax.add_patch(
                Rectangle((-0.5, r - 0.5), len(grid.columns), 1, fill=False, ec="red", lw=2, ls="--")
            )
    ax.legend(
        handles=[
            Patch(color=VERDICT_COLOURS["valid"], label="valid"),
            Patch(color=VERDICT_COLOURS["INVALID"], label="invalid"),
            Patch(color=VERDICT_COLOURS["unknown"], label="unknown"),
            Patch(fill=False, ec="black", lw=2.5, label="expected to fail"),
            Patch(fill=False, ec="red", ls="--", label="row NOT as expected"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ok = matrix.data.get("as_expected")
    ax.set_title(
        "safeguard matrix: " + ("every row as expected" if ok else "NOT AS EXPECTED"),
        loc="left",
        color="black" if ok else "red",
        pad=24,
    )
    fig.tight_layout()
    return fig


def load(run: RunFolder) -> Figure:
    """Locust's history: requests/s and failures/s by request class, and p50/p95/p99 of all requests,
    fault windows shaded."""
    history = run.load_history()
    faults = run.faults
    colours = fault_colours(faults["cls"])
    fig, (rate_ax, lat_ax, fail_ax) = plt.subplots(3, 1, figsize=(13, 10), sharex=True)
    if history.empty:
        _nothing(rate_ax, "no load_stats_history.csv in this folder")
        return fig
    classes = [r for r in sorted(history["request"].unique()) if r != "Aggregated"]
    palette = _palette("tab10")
    for i, request in enumerate(classes):
        mine = history[history["request"] == request]
        rate_ax.plot(mine["t"], mine["Requests/s"], lw=1, color=palette[i % 10], label=request)
        fail_ax.plot(mine["t"], mine["Failures/s"], lw=1, color=palette[i % 10], label=request)
        lat_ax.plot(mine["t"], mine["95%"], lw=0.8, color=palette[i % 10], ls="--")
    total = history[history["request"] == "Aggregated"]
    if not total.empty:
        rate_ax.plot(total["t"], total["Requests/s"], color="black", lw=1.6, label="all requests")
        fail_ax.plot(total["t"], total["Failures/s"], color="black", lw=1.6, label="all requests")
        for quantile, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
            if quantile in total:
                lat_ax.plot(
                    total["t"], total[quantile], color="black", ls=style, lw=1.4, label=f"all {quantile}"
                )
    rate_ax.set_ylabel("requests/s")
    lat_ax.set_ylabel("response time (ms)")
    lat_ax.set_yscale("log")
    fail_ax.set_ylabel("failures/s")
    fail_ax.set_xlabel("seconds since the chaos phase started (or the load began)")
    rate_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="request class")
    lat_ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="all: p50 p95 p99; classes: p95"
    )
    for ax in (rate_ax, lat_ax, fail_ax):
        shade_faults(ax, faults, colours)
    rate_ax.set_title(f"{run.title}: load (Locust)", loc="left")
    fig.tight_layout()
    return fig


def compare(summaries: pd.DataFrame) -> Figure:
    """Runs side by side: settle time, throughput, reconciler work, and each invariant's verdict."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    if summaries.empty:
        _nothing(axes[0][0], "no run folders to compare")
        return fig
    labels = [f"{r.scenario} s{r.seed} {r.commit[:7]}" for r in summaries.itertuples()]
    y = range(len(summaries))
    for ax, column, title in (
        (axes[0][0], "settled_after_s", "settle time (s)"),
        (axes[0][1], "accepted_per_s", "messages accepted per second of chaos"),
        (axes[1][0], "ops_ok_per_s", "client operations ok per second"),
    ):
        values = pd.to_numeric(summaries[column], errors="coerce").fillna(0)
        ax.barh(list(y), values)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.set_title(title, loc="left", fontsize=9)
        ax.invert_yaxis()
    work = summaries[["expired_leases", "resolved_accepted", "resolved_not_accepted", "batches_requeued"]]
    left = pd.Series(0.0, index=summaries.index)
    for column in work.columns:
        axes[1][1].barh(list(y), work[column], left=left, label=column)
        left += work[column]
    axes[1][1].set_yticks(list(y), labels, fontsize=7)
    axes[1][1].invert_yaxis()
    axes[1][1].legend(fontsize=7)
    axes[1][1].set_title("reconciler work (totals)", loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def verdict_grid(summaries: pd.DataFrame) -> Figure:
    """Each run's verdict per invariant, as the matrix shows it."""
    ids = sorted(
        (c for c in summaries.columns if c.startswith("I") and c[1:].isdigit()), key=lambda i: int(i[1:])
    )
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(ids) + 4), 0.42 * max(len(summaries), 2) + 1.2))
    if summaries.empty or not ids:
        _nothing(ax, "no verdicts to compare")
        return fig
    for r, row in enumerate(summaries.itertuples(index=False)):
        for c, invariant in enumerate(ids):
            word = getattr(row, invariant) if isinstance(getattr(row, invariant), str) else "unknown"
            ax.add_patch(Rectangle((c, r), 0.95, 0.9, color=VERDICT_COLOURS.get(word, "#eeeeee")))
    ax.set_xlim(0, len(ids))
    ax.set_ylim(len(summaries), 0)
    ax.set_xticks([c + 0.47 for c in range(len(ids))], ids)
    labels = [f"{r.scenario} s{r.seed} {r.commit[:7]}" for r in summaries.itertuples()]
    ax.set_yticks([r + 0.45 for r in range(len(summaries))], labels, fontsize=7)
    ax.xaxis.tick_top()
    fig.tight_layout()
    return fig
