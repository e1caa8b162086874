"""What `fastpool bench` shows: the table of medians and ratios, its progress line, and
the chart (`--plot`). The measuring is fastpool._bench's; this module only presents its
`to_json()` report.
"""

from __future__ import annotations

import shutil
import sys
from typing import IO, Any, Mapping

__all__ = ["Progress", "figure", "format_table", "plot"]


def _fmt(value: float | None, stopped: bool = False) -> str:
    if value is None or value != value:
        return "-"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return (">" if stopped else "") + text


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def _capped(row: dict[str, Any]) -> bool:
    """The baseline or the subject was stopped at its cap: the ratio is only a bound."""
    return bool(set(row["stopped"]) & {row["baseline"], row["subject"]})


def _name(row: dict[str, Any]) -> str:
    # For cases measured against another baseline (the Pool vs the bare executor) the
    # columns still hold stdlib and fastpool; the row names its comparison.
    if row["baseline"] != "stdlib" or row["subject"] != "fastpool":
        return f"{row['case']} ({row['subject']} vs {row['baseline']})"
    return str(row["case"])


def format_table(report: dict[str, Any]) -> str:
    """One row per case and metric: the medians, the ratio, the other implementations."""
    header = ("case", "metric", "stdlib", "fastpool", "ratio", "others")
    rows = [header]
    for row in report["cases"]:
        med, stopped = row["median"], set(row["stopped"])
        others = [f"{impl}={_fmt(v, impl in stopped)}" for impl, v in med.items()
                  if impl not in ("stdlib", "fastpool")]
        rows.append((_name(row), row["unit"], _fmt(med.get("stdlib"), "stdlib" in stopped),
                     _fmt(med.get("fastpool"), "fastpool" in stopped),
                     _fmt_ratio(row["ratio"]) + ("+" if _capped(row) else ""),
                     " ".join(others)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    m = report["machine"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"ratio > 1: fastpool better (baseline/fastpool for times); '>' and '+': "
                 "the run was stopped at its cap, the true value is larger. "
                 f"Medians of {report['repeat']} interleaved runs, scale {report['scale']:g}; "
                 f"{m['platform']}, {m['cpus']} CPUs, {m['implementation']} {m['python']}, "
                 f"fastpool {m['fastpool']} ({'native' if m['native'] else 'pure-Python'} core).")
    return "\n".join(lines)


class Progress:
    """Where the runs are, on one line of a terminal (rewritten in place, cleared at the
    end), so the table is the first thing printed; `verbose`: every run's metrics, one
    line each. Nothing on a stream that is not a terminal unless verbose."""

    def __init__(self, total: int, verbose: bool, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._total = total
        self._done = 0
        self._verbose = verbose
        self._live = not verbose and self._stream.isatty()
        self._width = 0

    def __call__(self, case: Any, impl: str, metrics: Mapping[str, float]) -> None:
        self._done += 1
        if self._verbose:
            print(f"  {case.name:<12} {impl:<14} "
                  + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                  file=self._stream, flush=True)
        elif self._live:
            columns = shutil.get_terminal_size().columns
            text = f"fastpool bench: {self._done}/{self._total} runs, last {case.name} {impl}"
            text = text[:columns - 1]
            self._stream.write("\r" + text.ljust(self._width) + "\r")
            self._stream.flush()
            self._width = len(text)

    def close(self) -> None:
        if self._live and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def plot(report: dict[str, Any], path: str) -> None:
    """Save figure(report) as `path` (PNG, SVG, PDF: by its extension)."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    fig.savefig(path)
    plt.close(fig)


def figure(report: dict[str, Any]) -> Any:
    """A bar chart of the ratios (log scale), each bar labelled with its value. Ratios
    that are only bounds (a run stopped at its cap, often thousands) get a panel of
    their own, so they do not squash the scale of the measured ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["cases"] if r["ratio"]]
    measured = [r for r in rows if not _capped(r)]
    capped = [r for r in rows if _capped(r)]
    panels = [(measured, "measured")] if measured else []
    if capped:
        panels.append((capped, "stopped at the cap: at least"))
    fig, axes = plt.subplots(
        1, len(panels), squeeze=False,
        figsize=(max(6.0, 0.9 * len(rows) + 1.5), 4.5),
        gridspec_kw={"width_ratios": [max(1, len(p)) for p, _ in panels]})
    for ax, (group, title) in zip(axes[0], panels):
        ratios = [r["ratio"] for r in group]
        bounds = group is capped
        bars = ax.bar([f"{_name(r)}\n{r['metric']}" for r in group], ratios,
                      color=["tab:gray" if bounds else
                             "tab:green" if x >= 1 else "tab:red" for x in ratios],
                      hatch="//" if bounds else None)
        ax.bar_label(bars, labels=[(">= " if bounds else "") + _fmt_ratio(x) for x in ratios],
                     fontsize=7, padding=2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.margins(y=0.15)  # room for the labels above the tallest bar
        ax.set_title(title, fontsize=9)
        plt.setp(ax.get_xticklabels(), fontsize=7, rotation=30, ha="right")
    axes[0][0].set_ylabel("ratio (> 1: fastpool better)")
    m = report["machine"]
    fig.suptitle(f"fastpool {m['fastpool']} vs baseline, {m['implementation']} {m['python']}, "
                 f"{m['cpus']} CPUs, medians of {report['repeat']} runs", fontsize=10)
    fig.tight_layout()
    return fig
