"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

- ``curves.png``: test top-1 per epoch, one line per method (the mean over seeds) with the
  seeds' min-max band, one panel per pair;
- ``losses.png``: each loss term per epoch (mean over seeds, min-max band), one panel per
  pair and method;
- ``ablation.png``: per pair, each variant's best test top-1 (mean over seeds, the point;
  the sample standard deviation, the error bar), grouped by the number of views the runs
  trained with, the baseline's mean as a dashed line; imported logs are not in it;
- ``swaps.png``: for SLD and its variants, the share of training samples (both views) on which the teacher's
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
    own = [row for row in table if not row.imported]
    if own:
        written.append(_ablation(own, root / "ablation.png", mpl))
    sld = [row for row in own if row.base_method == "SLD"]
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


def ablation_groups(rows: list) -> list[tuple[str, list]]:
    """``[(views, rows)]``: ``rows`` (one pair's) grouped by their runs' number of views, in
    the order of the views, each group in the rows' order."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row.joined("views"), []).append(row)
    return sorted(groups.items(), key=lambda item: item[0])


def _ablation(table, path, mpl) -> Path:
    pairs = list(dict.fromkeys(row.pair for row in table))
    figure, axes = _grid(len(pairs), mpl, columns=1)
    for axis, pair in zip(axes, pairs):
        rows = [row for row in table if row.pair == pair]
        position, ticks, names = 0, [], []
        for views, group in ablation_groups(rows):
            start = position
            for row in group:
                mean, std = row.as_dict()["best_mean"], row.as_dict()["best_std"]
                axis.errorbar(position, mean, yerr=std or 0.0, fmt="o", capsize=5, color=f"C{views if views.isdigit() else 0}")
                ticks.append(position)
                names.append(textwrap.fill(f"{row.name} (n={row.n})", 12))
                position += 1
            axis.annotate(f"{views} view{'' if views == '1' else 's'}", xy=((start + position - 1) / 2, 0.97), xycoords=("data", "axes fraction"),
                          ha="center", va="top", fontweight="bold")
            position += 1  # a gap between protocols
        base = next((row for row in rows if row.baseline == row.name), None)
        if base is not None:
            axis.axhline(base.as_dict()["best_mean"], color="grey", linestyle="--", label=f"baseline {base.name}")
            axis.legend(fontsize="small", loc="lower right")
        axis.set_xticks(ticks, names, fontsize="small")
        axis.set_xlim(-0.7, position - 0.3)
        axis.margins(y=0.25)
        axis.set(title=f"{pair}: best test top-1 (mean ± std over seeds)", ylabel="top-1 (%)")
    most = max(sum(row.pair == pair for row in table) for pair in pairs)
    figure.set_size_inches(max(PANEL_SIZE[0], 1.6 * most + 2), PANEL_SIZE[1] * 1.3 * len(pairs))
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
