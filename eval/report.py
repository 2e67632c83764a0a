"""Presenting eval results: a terminal table, a markdown report and a PNG chart comparing modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from qiao.eval.metrics import METRICS
from qiao.eval.run import EvalResult

COLUMNS = list(METRICS) + ["p50 ms", "p95 ms"]


def _row(mode) -> list[str]:
    return [mode.mode] + [f"{mode.metrics[m]:.4f}" for m in METRICS] + [
        f"{mode.latency_ms['p50']:.2f}",
        f"{mode.latency_ms['p95']:.2f}",
    ]


def _best(result: EvalResult) -> dict[str, set[str]]:
    """Modes with the highest value of each metric (ties: all of them)."""
    out = {}
    for m in METRICS:
        top = max(r.metrics[m] for r in result.modes)
        out[m] = {r.mode for r in result.modes if r.metrics[m] == top}
    return out


def text_table(result: EvalResult) -> str:
    """A fixed-width table for the terminal (best value of each metric marked with ``*``)."""
    best = _best(result)
    header = ["mode"] + COLUMNS
    rows = []
    for mr in result.modes:
        r = _row(mr)
        for j, m in enumerate(METRICS, start=1):
            if mr.mode in best[m] and len(best[m]) < len(result.modes):
                r[j] += "*"
        rows.append(r)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    sample = f", sample of {result.sample}" if result.sample else ""
    lines = [
        f"{result.dataset}: {result.queries} queries{sample}, {result.documents} documents -> {result.chunks} chunks"
        f" ({'index built' if result.index_built else 'index reused'}, {result.seconds:.1f}s)",
        fmt(header),
        fmt(["-" * w for w in widths]),
        *(fmt(r) for r in rows),
    ]
    e2e = [m for m in result.modes if m.e2e_latency_ms]
    if e2e:
        lines.append(
            f"single-query search() incl. query embedding, {result.e2e_sample} queries: "
            + ", ".join(f"{m.mode} p50 {m.e2e_latency_ms['p50']:.1f} / p95 {m.e2e_latency_ms['p95']:.1f} ms" for m in e2e)
        )
    lines.append("latency columns: retrieval with the query vector precomputed (batch-embedded), per query")
    return "\n".join(lines)


def markdown_table(result: EvalResult) -> str:
    best = _best(result)
    out = ["| mode | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for mr in result.modes:
        cells = _row(mr)
        for j, m in enumerate(METRICS, start=1):
            if mr.mode in best[m] and len(best[m]) < len(result.modes):
                cells[j] = f"**{cells[j]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def chart(results: Sequence[EvalResult], path: Path) -> Path:
    """Grouped bars: one panel per metric, one bar per mode, one group per dataset. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    metrics = list(METRICS)
    modes = [m.mode for m in results[0].modes]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.8), sharey=True)
    width = 0.8 / max(len(modes), 1)
    colours = {"bm25": "#d98c3f", "vector": "#4f81bd", "hybrid": "#3a9e5c"}
    for ax, metric in zip(axes, metrics):
        for j, mode in enumerate(modes):
            xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(results))]
            ys = [next((m.metrics[metric] for m in r.modes if m.mode == mode), 0.0) for r in results]
            ax.bar(xs, ys, width, label=mode, color=colours.get(mode))
            for x, y in zip(xs, ys):
                ax.text(x, y + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_title(metric)
        ax.set_xticks(range(len(results)))
        ax.set_xticklabels([r.dataset for r in results], rotation=20, ha="right", fontsize=7)
        ax.set_ylim(0, 1.08)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(modes), fontsize=8, frameon=False)
    fig.suptitle("Qiao retrieval by mode", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: Sequence[EvalResult], directory: Path, command: str = "") -> Path:
    """``report.md`` + ``modes.png`` + ``results.json`` under ``directory``. Returns the markdown path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = chart(results, directory / "modes.png")
    lines = ["# Qiao retrieval evaluation", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    s = results[0].settings
    lines += [
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in s.items()),
        "",
        f"![nDCG@10, recall and MRR by mode]({png.name})",
        "",
    ]
    for r in results:
        sample = f" (seeded sample of {r.sample})" if r.sample else ""
        lines += [
            f"## {r.dataset}",
            "",
            f"{r.queries} queries{sample}, {r.documents} documents, {r.chunks} chunks. Dataset: `{r.path}`.",
            "",
            markdown_table(r),
            "",
        ]
        e2e = [m for m in r.modes if m.e2e_latency_ms]
        if e2e:
            lines += [
                f"Single-query `search()` with the query embedded each time ({r.e2e_sample} queries): "
                + "; ".join(f"{m.mode} p50 {m.e2e_latency_ms['p50']:.1f} ms, p95 {m.e2e_latency_ms['p95']:.1f} ms" for m in e2e),
                "",
            ]
    lines += [
        "Latency columns: per query, retrieval only (query vectors embedded in batches beforehand).",
        "A BEIR document split into several chunks is ranked by its best chunk.",
        "",
    ]
    md = directory / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    (directory / "results.json").write_text(
        json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return md
