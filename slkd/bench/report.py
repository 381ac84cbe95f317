"""slkd-bench report: tables and figures from the run folders' own records, nothing else.

Reads every ``<pair>/<method>/seed<k>/`` under the benchmark folder (or under its ``smoke/``
folder when only that one holds runs): ``summary.json`` (with the views, data and device
the trainer recorded), ``metrics.jsonl``, ``config.yaml`` and ``environment.json``, as
slkd's trainer writes them. Only complete runs
(``epochs_done == epochs``) enter the numbers; the others are listed as left out.

Writes ``summary.md`` and ``summary.csv`` (per pair and variant: best and last test top-1 as
mean and sample standard deviation over seeds, the difference to the baseline variant with
its 95% confidence interval, paired by seed or Welch's (:mod:`slkd.bench.stats`), the
protocol, seconds per epoch, peak GPU memory when recorded, the published number with its
source) and the figures of :mod:`slkd.bench.plots`. The baseline is ``--baseline``, else the
one ``slkd-bench run`` recorded in ``benchmark.json``, else each pair's first row; the rows
follow the order of the run's variants.

Only runs with the same settings are averaged together: the whole ``config.yaml`` (but the
keys that only place a run: the seed, ``LOG.PREFIX``, ``EXPERIMENT.*``, and those that only
say how it is executed: loader, evaluation frequency, the exact opt-in modes) and the run options
(data: real, ``--smoke`` or ``--synthetic N``; device). When the seeds of one pair and method
differ there, each setting gets its own row, labelled with the keys that differ and their
values, and the report says so (a warning line, and a note in ``summary.md``).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from slkd.bench.configs import PLACEMENT_KEYS
from slkd.bench.plan import is_complete, read_summary, recorded_options
from slkd.bench.published import SOURCES, TOP1, published
from slkd.bench.sources import METHODS, BenchError, known_pairs
from slkd.bench.stats import Difference, difference
from slkd.bench.variants import VIEWS_SUFFIX, read_variant
from slkd.host.protocol import method_views
from slkd.bench.worklog import Worklog
from slkd.utils.records import read_metric_lines
from slkd.utils.settings import EXECUTION_KEYS, flatten, is_under

SEED_FOLDER = re.compile(r"seed(\d+)$")
MANIFEST = "benchmark.json"  # the variants of slkd-bench run, in order, and the baseline
CSV_COLUMNS = (
    "pair", "method", "variant", "settings", "n", "seeds", "best_mean", "best_std", "last_mean", "last_std",
    "baseline", "comparison", "best_diff", "best_ci_low", "best_ci_high", "last_diff", "last_ci_low", "last_ci_high", "epochs", "views",
    "augmentation", "data", "amp", "train_seconds_per_epoch", "eval_seconds_per_epoch", "peak_memory_mib",
    "published", "published_source",
)


@dataclass
class RunFolder:
    """What one run folder holds."""

    pair: str
    method: str
    seed: int
    folder: Path
    summary: dict | None
    metrics: list
    config: dict
    environment: dict
    variant: dict = None  # variant.json: name, method, config, set ({} for a plain method)
    problems: tuple = ()  # what was damaged in the folder's records, one line each

    @property
    def complete(self) -> bool:
        return is_complete(self.summary)

    @property
    def base_method(self) -> str:
        """The method the run trained (``DISTILLER.TYPE``), whatever its variant's name."""
        return self.config.get("DISTILLER", {}).get("TYPE") or (self.variant or {}).get("method") or self.method

    @property
    def views(self) -> int | str:
        """Views per training batch, as the trainer recorded them."""
        return (self.summary or {}).get("views", "not recorded")

    @property
    def augmentation(self) -> str:
        return {1: "standard (crop, flip)", 2: "standard + RandAugment strong view"}.get(self.views, "not recorded")

    @property
    def options(self) -> dict:
        """Data and device, as the trainer recorded them in ``summary.json``."""
        return recorded_options(self.summary)

    @property
    def data(self) -> str:
        mode = self.options.get("data")
        if mode is None:
            return "not recorded"
        if mode == "smoke":
            return "synthetic (--smoke)"
        if mode.startswith("synthetic "):
            return f"synthetic ({mode.split()[1]} images, random teacher)"
        dataset = self.config.get("DATASET", {}).get("TYPE", "?")
        return {"cifar100": "CIFAR-100", "imagenet": "ImageNet"}.get(dataset, dataset)

    @property
    def amp(self) -> str:
        """``SLKD.AMP`` of the run (slkd's default, none, when its config has no SLKD node)."""
        return str(self.config.get("SLKD", {}).get("AMP", "none"))

    @property
    def settings(self) -> dict:
        """What must match for two runs to be averaged: the flat config but its placement
        keys and the keys that only say how a run is executed (loader, evaluation frequency,
        exact opt-in modes, ...: :data:`slkd.utils.settings.EXECUTION_KEYS`), with the run
        options."""
        flat = flatten(self.config)
        kept = {key: value for key, value in flat.items() if key not in PLACEMENT_KEYS and not is_under(key, EXECUTION_KEYS)}
        return dict(kept, **self.options)


@dataclass
class ImportedRun:
    """An imported ``worklog.txt`` (:mod:`slkd.bench.worklog`), read as a run: its row and
    curve are labelled ``imported`` with its path; what the log does not record (seed,
    views, data, precision, machine) is shown as not recorded."""

    log: Worklog
    pair: str
    method: str
    seed = None
    variant = {}
    config = {}
    environment = {}
    views = "not recorded"
    augmentation = "not recorded"
    data = "imported log"
    amp = "not recorded"
    complete = True

    @property
    def folder(self) -> Path:
        return self.log.path

    @property
    def base_method(self) -> str:
        return self.method

    @property
    def metrics(self) -> list:
        return self.log.epochs

    @property
    def summary(self) -> dict:
        epochs = self.log.epochs[-1]["epoch"]
        return {"best_acc": self.log.best, "last_acc": self.log.last, "epochs_done": epochs, "epochs": epochs}


def imported_row(log: Worklog) -> "Row":
    """The report row of an imported log: its pair and method read from its folder's name
    (mdistiller's ``method,teacher,student`` tag) when that names a known pair, else
    ``imported``."""
    parts, pair, method = log.name_parts(), "imported", "imported"
    if parts:
        candidate = f"{parts[1]}_{parts[2]}"
        if candidate in known_pairs():
            pair, method = candidate, parts[0].upper()
    state = "" if log.finished else f", unfinished at epoch {log.epochs[-1]['epoch']}"
    return Row(pair, method, [ImportedRun(log, pair, method)], label=f"imported: {log.path}{state}")


@dataclass
class Row:
    """One line of the summary: a (pair, variant) over its complete runs with one setting
    (``method``: the variant's name, the run folder's); ``differing`` names the settings in
    which this row's runs differ from the pair and variant's other rows, and ``label`` gives
    this row's values of them. ``baseline``, ``best`` and ``last``: the comparison with the
    pair's baseline row (:func:`compare`)."""

    pair: str
    method: str
    runs: list
    differing: tuple = ()
    label: str = ""
    baseline: str = ""
    best: Difference | None = None
    last: Difference | None = None

    @property
    def base_method(self) -> str:
        return self.runs[0].base_method

    @property
    def imported(self) -> bool:
        return isinstance(self.runs[0], ImportedRun)

    @property
    def overrides(self) -> str:
        """The variant's config and overrides as its runs recorded them (``config FOLDER,
        KEY value, ...``)."""
        record = self.runs[0].variant or {}
        source = [f"config {record['config']}/{self.pair}.yaml"] if record.get("config") else []
        return ", ".join(source + [f"{key} {value!r}" for key, value in (record.get("set") or {}).items()])

    def by_seed(self, key: str) -> dict:
        return {run.seed: run.summary[key] for run in self.runs}

    @property
    def name(self) -> str:
        """The method, with the row's label when its pair and method have several rows."""
        return f"{self.method} [{self.label}]" if self.label else self.method

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, key: str) -> list[float]:
        return [run.summary[key] for run in self.runs]

    def per_epoch(self, key: str) -> list[float]:
        return [line[key] for run in self.runs for line in run.metrics if isinstance(line.get(key), (int, float))]

    def joined(self, attribute: str) -> str:
        return "/".join(str(value) for value in sorted({getattr(run, attribute) for run in self.runs}, key=str))

    def as_dict(self) -> dict:
        best, last = self.values("best_acc"), self.values("last_acc")
        train, evaluation, memory = self.per_epoch("train_seconds"), self.per_epoch("eval_seconds"), self.per_epoch("peak_memory_mib")
        paper = published_for(self.pair, self.method, self.base_method)
        best_diff, last_diff = self.best, self.last
        return {
            "pair": self.pair,
            "method": self.base_method,
            "variant": self.method,
            "settings": ", ".join(part for part in (self.overrides, self.label) if part),
            "n": self.n,
            "seeds": " ".join(str(run.seed) for run in self.runs if run.seed is not None),
            "best_mean": statistics.mean(best),
            "best_std": statistics.stdev(best) if self.n > 1 else None,
            "last_mean": statistics.mean(last),
            "last_std": statistics.stdev(last) if self.n > 1 else None,
            "baseline": self.baseline,
            "comparison": best_diff.kind if best_diff else "",
            "best_diff": best_diff.estimate if best_diff else None,
            "best_ci_low": best_diff.low if best_diff else None,
            "best_ci_high": best_diff.high if best_diff else None,
            "last_diff": last_diff.estimate if last_diff else None,
            "last_ci_low": last_diff.low if last_diff else None,
            "last_ci_high": last_diff.high if last_diff else None,
            "epochs": "/".join(str(e) for e in sorted({run.summary["epochs"] for run in self.runs})),
            "views": self.joined("views"),
            "augmentation": self.joined("augmentation"),
            "data": self.joined("data"),
            "amp": self.joined("amp"),
            "train_seconds_per_epoch": statistics.mean(train) if train else None,
            "eval_seconds_per_epoch": statistics.mean(evaluation) if evaluation else None,
            "peak_memory_mib": max(memory) if memory else None,
            "published": paper[0] if paper else None,
            "published_source": paper[1] if paper else "",
        }


def published_for(pair: str, name: str, method: str) -> tuple[float, str] | None:
    """The published top-1 of the variant ``name`` (of ``method``) on ``pair``: its own, or
    for ``NAME@Nview(s)`` at the method's own number of views, NAME's."""
    found = published(pair, name)
    suffix = VIEWS_SUFFIX.match(name)
    if found is None and suffix and int(suffix.group("views")) == method_views(method, None):
        found = published(pair, suffix.group("base"))
    return found


def compare(table: list[Row], baseline: str | None) -> list[str]:
    """Set each row's difference to its pair's baseline row (``baseline`` by name, else the
    pair's first row), best and last top-1, 95% CI; return warnings for pairs without it."""
    warnings = []
    for pair in dict.fromkeys(row.pair for row in table):
        own = [row for row in table if row.pair == pair and not row.imported]
        base = next((row for row in own if row.method == baseline), None) if baseline else (own[0] if own else None)
        if base is None:
            if own:
                warnings.append(f"{pair}: no complete run of the baseline {baseline}; no differences shown")
            continue
        for row in own:
            row.baseline = base.name
            if row is not base:
                row.best = difference(row.by_seed("best_acc"), base.by_seed("best_acc"))
                row.last = difference(row.by_seed("last_acc"), base.by_seed("last_acc"))
    return warnings


def write_manifest(root: Path, names: list[str], baseline: str) -> Path:
    """Record the benchmark's variants (in order, after those an earlier run recorded) and
    its baseline in ``root/benchmark.json``."""
    root = Path(root)
    earlier = read_manifest(root).get("variants", [])
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    path.write_text(json.dumps({"variants": list(dict.fromkeys(earlier + names)), "baseline": baseline}, indent=2) + "\n")
    return path


def read_manifest(root: Path) -> dict:
    return _read_json(Path(root) / MANIFEST)


def runs_root(folder: Path) -> Path:
    """``folder``, or ``folder/smoke`` when only that one holds run folders."""
    if _run_folders(folder):
        return folder
    if _run_folders(folder / "smoke"):
        return folder / "smoke"
    raise BenchError(f"no run folders (<pair>/<method>/seed<k>/summary.json) under {folder}: run slkd-bench run --out {folder} first")


def _run_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.glob("*/*/seed*/summary.json") if SEED_FOLDER.search(path.parent.name))


def load_runs(root: Path) -> list[RunFolder]:
    """Every run folder under ``root`` with a ``summary.json``."""
    records = []
    for folder in _run_folders(root):
        metrics, problems = _read_metrics(folder / "metrics.jsonl")
        summary = read_summary(folder)
        if not isinstance(summary, dict):
            summary = None
            problems.append("summary.json is unreadable (not a JSON object): the run is left out of the means")
        records.append(
            RunFolder(
                pair=folder.parent.parent.name,
                method=folder.parent.name,
                seed=int(SEED_FOLDER.search(folder.name).group(1)),
                folder=folder,
                summary=summary,
                metrics=metrics,
                config=_read_yaml(folder / "config.yaml"),
                environment=_read_json(folder / "environment.json"),
                variant=read_variant(folder),
                problems=tuple(problems),
            )
        )
    return records


def _read_metrics(path: Path) -> tuple[list, list]:
    """(the whole lines of a ``metrics.jsonl``, a problem line when some did not parse)."""
    lines, unreadable = read_metric_lines(path)
    problems = [f"metrics.jsonl has {len(unreadable)} unreadable line(s): its curves show the {len(lines)} whole one(s)"] if unreadable else []
    return lines, problems


def rows(records: list[RunFolder], order: list[str] = ()) -> list[Row]:
    """One :class:`Row` per (pair, variant) and setting with complete runs: the variants in
    ``order`` first, in that order, then the methods in the usual order, then by name."""
    groups: dict[tuple, list] = {}
    for record in records:
        if record.complete:
            groups.setdefault((record.pair, record.method), []).append(record)
    rank = {name: index for index, name in enumerate(list(order) + [m for m in METHODS if m not in order])}
    keys = sorted(groups, key=lambda key: (key[0], rank.get(key[1], len(rank)), key[1]))
    return [row for pair, method in keys for row in _rows_by_setting(pair, method, sorted(groups[(pair, method)], key=lambda r: r.seed))]


def _rows_by_setting(pair: str, method: str, runs: list[RunFolder]) -> list[Row]:
    """One row per distinct setting of ``runs`` (one pair and method), labelled with the
    settings that differ when there are several."""
    by_setting: dict[str, list] = {}
    for run in runs:
        by_setting.setdefault(_canonical(run.settings), []).append(run)
    if len(by_setting) == 1:
        return [Row(pair, method, runs)]
    settings = [group[0].settings for group in by_setting.values()]
    keys = sorted({key for setting in settings for key in setting})
    differing = tuple(key for key in keys if len({_canonical([key in s, s.get(key)]) for s in settings}) > 1)
    table = [Row(pair, method, group, differing, _label(group[0].settings, differing)) for group in by_setting.values()]
    return sorted(table, key=lambda row: row.label)


def _canonical(value) -> str:
    """``value`` as a string that is equal for equal values (lists and dicts included)."""
    return json.dumps(value, sort_keys=True, default=str)


def _label(setting: dict, keys: tuple) -> str:
    """``KEY value, ...`` of ``keys`` in ``setting``."""
    return ", ".join(f"{key} {_show(setting[key]) if key in setting else 'unset'}" for key in keys)


def _show(value) -> str:
    """A config value as a label shows it: strings bare, the rest as Python writes them."""
    return value if isinstance(value, str) else repr(value)


def mixed_settings(table: list[Row]) -> list[str]:
    """A warning per pair and method whose runs were split into rows by their settings."""
    split = {(row.pair, row.method): row.differing for row in table if row.differing}
    return [
        f"{pair} {method}: its runs differ in {', '.join(differing)}; not averaged together: one row per setting"
        for (pair, method), differing in split.items()
    ]


def report(folder: Path, echo=print, imports=(), baseline: str | None = None) -> list[Path]:
    """Write the tables and figures next to the runs; return the files written. ``imports``:
    paths of ``worklog.txt`` files (or their folders) shown as extra rows and curves; with
    them, ``folder`` may hold no runs (the report is then written into it). ``baseline``:
    the variant the others are compared with (default: the run's, else each pair's first)."""
    from slkd.bench import plots, worklog

    logs = [worklog.read(path) for path in imports]
    if logs and not _run_folders(Path(folder)) and not _run_folders(Path(folder) / "smoke"):
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = runs_root(Path(folder))
    if root != Path(folder):
        echo(f"[slkd-bench] only smoke runs under {folder}: reporting {root}")
    records = load_runs(root)
    for record in records:
        for problem in record.problems:
            echo(f"[slkd-bench] warning: {record.folder}: {problem}; rerun it (slkd-bench run resumes it) or delete the folder")
    manifest = read_manifest(root)
    table = rows(records, manifest.get("variants", []))
    if not table and not logs:
        raise BenchError(f"no complete run under {root}: each run's summary.json must record all its epochs")
    baseline = baseline or manifest.get("baseline")
    names = {row.method for row in table}
    if baseline and baseline not in names and table:
        raise BenchError(f"--baseline {baseline}: no complete run of it under {root}; variants there: {', '.join(sorted(names))}")
    for warning in compare(table, baseline):
        echo(f"[slkd-bench] warning: {warning}")
    table += [imported_row(log) for log in logs]
    for warning in mixed_settings(table):
        echo(f"[slkd-bench] warning: {warning}")
    written = [write_csv(table, root / "summary.csv"), write_markdown(table, records, root / "summary.md")]
    written += plots.draw_all(table, root, tables_written=written)
    return written


def write_csv(table: list[Row], path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in table:
            writer.writerow({key: "" if value is None else value for key, value in row.as_dict().items()})
    return path


def write_markdown(table: list[Row], records: list[RunFolder], path: Path) -> Path:
    lines = [
        f"# slkd-bench report: {path.parent}",
        "",
        "Test top-1 (%) of the student: mean ± sample standard deviation over seeds (n complete runs).",
        "Best: the highest test top-1 over a run's epochs (what papers usually report); last: its final epoch.",
        "Published: the baselines' authors' numbers (KD, DKD: mdistiller's README; MLKD: the logit-standardization README), not these runs'.",
        "",
        "| pair | method | n | best top-1 | last top-1 | best − baseline [95% CI] | last − baseline [95% CI] | epochs | views | augmentation | data | AMP | s/epoch train | s/epoch eval | peak GPU MiB | published |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        d = row.as_dict()
        lines.append(
            f"| {d['pair']} | {row.name} | {d['n']} | {_mean_std(d['best_mean'], d['best_std'])} | "
            f"{_mean_std(d['last_mean'], d['last_std'])} | {_versus(row, row.best)} | {_versus(row, row.last)} | {d['epochs']} | {d['views']} | {d['augmentation']} | {d['data']} | {d['amp']} | "
            f"{_number(d['train_seconds_per_epoch'], '.2f')} | {_number(d['eval_seconds_per_epoch'], '.2f')} | "
            f"{_number(d['peak_memory_mib'], '.0f', 'not recorded')} | {_number(d['published'], '.2f')} |"
        )
    lines += ["", "Notes:", ""] + [f"- {note}" for note in _notes(table, records)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _versus(row: Row, diff: Difference | None) -> str:
    """The markdown cell of a difference to the baseline (the baseline's own row says so)."""
    if diff is not None:
        return diff.describe()
    return "baseline" if row.baseline and row.baseline == row.name else ""


def _notes(table: list[Row], records: list[RunFolder]) -> list[str]:
    notes = [f"not averaged together: {warning}." for warning in mixed_settings(table)]
    baselines = sorted({row.baseline for row in table if row.baseline})
    if baselines:
        notes.append(
            f"best/last − baseline ({', '.join(baselines)}): difference of the means, with a 95% t interval, paired by seed when both "
            "ran the same seeds (the same seed gives the same initial student and data order), Welch's otherwise; none with fewer than 2 seeds."
        )
    variants = {row.method: row.overrides for row in table if row.overrides}
    for name, overrides in variants.items():
        notes.append(f"variant {name}: {overrides}.")
    sources: dict[str, list] = {}
    for row in table:
        found = published_for(row.pair, row.method, row.base_method)
        if found and row.method not in sources.setdefault(found[1], []):
            sources[found[1]].append(row.method)
    for source, named in sources.items():
        notes.append(f"published {', '.join(named)}: {source}.")
    for pair in sorted({row.pair for row in table}):
        if "MLKD+LS" in TOP1.get(pair, {}):
            notes.append(f"{pair}: MLKD with logit standardization (MLKD+LS, not run here) is published at {TOP1[pair]['MLKD+LS']:.2f} ({SOURCES['MLKD+LS']}).")
    data = {row.as_dict()["data"] for row in table}
    if "synthetic (--smoke)" in data:
        notes.append("smoke runs: synthetic data and random teachers for two short epochs; their accuracies and times check the wiring, they measure nothing.")
    if any(label.startswith("synthetic (") and "--smoke" not in label for label in data):
        notes.append("synthetic runs (--synthetic): the configs' batch, loaders and loop on random pixels with random teachers; their times measure the loop, their accuracies mean nothing.")
    if any(isinstance(run, ImportedRun) for row in table for run in row.runs):
        notes.append(
            "imported rows: read from a training log in mdistiller's worklog.txt format (--import), not run by slkd-bench; "
            "best is the log's best_acc line (else its highest test_acc), last its final epoch's test_acc; "
            "its seed, data, views and machine are not recorded there."
        )
    notes.append("seconds per epoch: mean over the runs' epochs of the training and of the evaluation time; peak GPU memory: the highest over epochs and runs (CUDA runs only).")
    left_out = [f"{r.pair} {r.method} seed{r.seed} ({r.summary.get('epochs_done')}/{r.summary.get('epochs')} epochs)" for r in records if not r.complete and r.summary]
    if left_out:
        notes.append("left out, not finished: " + "; ".join(left_out) + ".")
    for machine, labels in _machines(table).items():
        notes.append(f"machine: {machine} ({', '.join(labels)}).")
    return notes


def _machines(table: list[Row]) -> dict[str, list]:
    machines: dict[str, list] = {}
    for row in table:
        for run in row.runs:
            env = run.environment
            if not env:  # an imported log records no machine
                continue
            host = env.get("host") or {}
            machine = (
                f"{', '.join(env.get('gpus') or []) or 'CPU only'}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}; "
                f"slkd {env.get('slkd', '?')} at {env.get('slkd_commit') or 'unknown commit'}; "
                f"host {host.get('path', '?')} at {host.get('commit') or 'unknown commit'}"
            )
            label = f"{row.pair} {row.name}"
            if label not in machines.setdefault(machine, []):
                machines[machine].append(label)
    return machines


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _number(value, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
