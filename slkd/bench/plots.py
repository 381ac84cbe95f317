"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

- ``curves.png``: test top-1 per epoch, one line per method (the mean over seeds) with the
  seeds' min-max band, one panel per pair;
- ``losses.png``: each loss term per epoch (mean over seeds, min-max band), one panel per
  pair and method;
- ``swaps.png``: for SLD, the share of training samples (both views) on which the teacher's
  top class is not the label, so its logits get swapped, and the same for the student as
  pseudo-teacher, per epoch; a dotted line marks ``SLD.GAMMA``, after which the
  pseudo-teacher term is on. Not drawn without SLD runs.

matplotlib is imported only here, when the figures are drawn.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

from slkd.bench.sources import BenchError

PANEL_SIZE = (5.0, 3.6)
LEGEND_WIDTH = 40  # characters per legend line (an imported log's label holds its path)


def draw_all(table: list, root: Path, tables_written=()) -> list[Path]:
    """Draw every figure for ``table`` (report rows) into ``root``; return the files written."""
    mpl = _matplotlib(tables_written)
    written = [_curves(table, root / "curves.png", mpl), _losses(table, root / "losses.png", mpl)]
    sld = [row for row in table if row.method == "SLD"]
    if sld:
        written.append(_swaps(sld, root / "swaps.png", mpl))
    return written


def series(runs: list, key: str) -> tuple[list, list, list, list]:
    """``(epochs, mean, low, high)`` of ``key`` over ``runs``' metrics, per epoch recorded."""
    by_epoch: dict[int, list] = {}
    for run in runs:
        for line in run.metrics:
            if isinstance(line.get(key), (int, float)):
                by_epoch.setdefault(line["epoch"], []).append(line[key])
    epochs = sorted(by_epoch)
    return (
        epochs,
        [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
        [min(by_epoch[e]) for e in epochs],
        [max(by_epoch[e]) for e in epochs],
    )


def _matplotlib(tables_written):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        done = f" ({', '.join(str(p) for p in tables_written)} were written)" if tables_written else ""
        raise BenchError(f"the figures need matplotlib, which is not installed: pip install matplotlib (or pip install 'slkd[report]'){done}") from None
    return SimpleNamespace(Figure=Figure, Canvas=FigureCanvasAgg, MaxNLocator=MaxNLocator)


def _grid(count: int, mpl, columns: int = 3):
    columns = min(columns, count)
    rows = -(-count // columns)
    figure = mpl.Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), layout="constrained")
    mpl.Canvas(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_visible(False)
    for axis in axes[:count]:
        axis.xaxis.set_major_locator(mpl.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    return figure, axes[:count]


def _band(axis, runs, key, label, scale=1.0, style="-"):
    epochs, mean, low, high = series(runs, key)
    if not epochs:
        return
    line = axis.plot(epochs, [v * scale for v in mean], style, label=label, marker="o" if len(epochs) < 10 else None)[0]
    if len(runs) > 1:
        axis.fill_between(epochs, [v * scale for v in low], [v * scale for v in high], color=line.get_color(), alpha=0.2, linewidth=0)


def _curves(table, path, mpl) -> Path:
    pairs = list(dict.fromkeys(row.pair for row in table))
    figure, axes = _grid(len(pairs), mpl, columns=2)
    for axis, pair in zip(axes, pairs):
        for row in (row for row in table if row.pair == pair):
            _band(axis, row.runs, "test_acc", textwrap.fill(f"{row.name} (n={row.n})", LEGEND_WIDTH))
        axis.set(title=f"{pair}: test top-1, mean and min-max over seeds", xlabel="epoch", ylabel="top-1 (%)")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path


def _losses(table, path, mpl) -> Path:
    figure, axes = _grid(len(table), mpl)
    for axis, row in zip(axes, table):
        terms = dict.fromkeys(key for run in row.runs for line in run.metrics for key in line if key.startswith("loss_"))
        for term in terms:
            _band(axis, row.runs, term, term)
        _band(axis, row.runs, "train_loss", "total", style="--")
        axis.set(title=f"{row.pair} {row.name}: training losses", xlabel="epoch", ylabel="loss (mean per image)")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path


def _swaps(rows, path, mpl) -> Path:
    figure, axes = _grid(len(rows), mpl, columns=2)
    for axis, row in zip(axes, rows):
        _band(axis, row.runs, "teacher_swap_rate", "teacher wrong: its logits swapped", scale=100.0)
        _band(axis, row.runs, "student_swap_rate", "student wrong: pseudo-teacher swapped (on after GAMMA)", scale=100.0)
        gammas = {run.config.get("SLD", {}).get("GAMMA") for run in row.runs} - {None}
        for gamma in gammas:
            axis.axvline(gamma, color="grey", linestyle=":", label=f"SLD.GAMMA = {gamma}")
        axis.set(title=f"{row.pair} {row.name}: swapped training samples", xlabel="epoch", ylabel="share of samples (%)")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path
