"""The benchmark's evidence, end to end on a CPU: ``slkd-bench run --smoke`` of KD, KD+swap,
DKD at one and two views, SLD, SLD-ts and KD+LS with two seeds, then ``slkd-bench report``
with an imported worklog; the rows, the confidence intervals (against scipy on the same
numbers) and the imported row are checked.

The runs are smoke runs (two epochs of two batches of synthetic images, random teachers) of
the smallest pair, two at a time; the test prints how long the benchmark took (measured:
the 14 runs in 266 s wall, about 2 CPU-minutes, on a 2-core machine shared with other jobs,
load 7; most of each run is importing torch and building resnet56 and resnet20).
"""

import csv
import json
import time

import pytest
from scipy import stats as sps

from slkd.bench.cli import main
from tests.test_bench_worklog import write_log

PAIR = "res56_res20"
VARIANTS = ["KD", "KD+swap", "DKD@1view", "DKD@2views", "SLD", "SLD-ts", "KD+LS"]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def evidence(host, tmp_path_factory):
    from pathlib import Path

    out = tmp_path_factory.mktemp("evidence")
    root = str(Path(host.package.__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLKD_MDISTILLER_PATH", root)
        started = time.perf_counter()
        code = main(["run", "--smoke", "--pair", PAIR, "--methods", ",".join(VARIANTS), "--seeds", ",".join(map(str, SEEDS)),
                     "--out", str(out), "--parallel", "2"])
        seconds = time.perf_counter() - started
    print(f"\n[evidence] {len(VARIANTS) * len(SEEDS)} smoke runs in {seconds:.0f} s")
    return out, code


def summaries(root, name):
    return {seed: json.loads((root / PAIR / name / f"seed{seed}" / "summary.json").read_text()) for seed in SEEDS}


@pytest.mark.host
@pytest.mark.slow
def test_the_benchmark_of_the_issue_runs_and_reports_with_intervals(evidence):
    out, code = evidence
    assert code == 0
    root = out / "smoke"
    log = write_log(out / "authors" / "kd,res56,res20", accs=[1.0, 2.0])
    assert main(["report", str(out), "--import", str(log)]) == 0
    with open(root / "summary.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    own = {row["variant"]: row for row in rows if not row["settings"].startswith("imported")}
    assert list(own) == VARIANTS, "every variant, in the order asked"
    views = {name: {s["views"] for s in summaries(root, name).values()} for name in VARIANTS}
    assert views["DKD@1view"] == {1} and views["DKD@2views"] == {2} and views["SLD"] == {2} and views["KD"] == {1}
    assert (own["KD+swap"]["method"], own["SLD-ts"]["method"], own["DKD@2views"]["method"]) == ("KD", "SLD", "DKD")
    assert own["KD+LS"]["settings"] == f"config ls/kd/{PAIR}.yaml"
    baseline = summaries(root, "KD")
    checked = 0
    for name in VARIANTS[1:]:
        row, runs = own[name], summaries(root, name)
        assert row["n"] == "2" and row["baseline"] == "KD" and row["comparison"] == "paired"
        for key, column in (("best_acc", "best"), ("last_acc", "last")):
            ours, theirs = [runs[s][key] for s in SEEDS], [baseline[s][key] for s in SEEDS]
            if ours[0] - theirs[0] == ours[1] - theirs[1]:  # no spread between the seeds: a zero-width interval
                assert float(row[f"{column}_ci_low"]) == float(row[f"{column}_ci_high"]) == pytest.approx(ours[0] - theirs[0])
                continue
            interval = sps.ttest_rel(ours, theirs).confidence_interval(0.95)
            checked += 1
            assert float(row[f"{column}_ci_low"]) == pytest.approx(interval.low, abs=1e-9), (name, column)
            assert float(row[f"{column}_ci_high"]) == pytest.approx(interval.high, abs=1e-9), (name, column)
    assert checked, "no difference with a spread over the seeds: nothing was compared with scipy"
    (imported,) = [row for row in rows if row["settings"].startswith("imported")]
    assert (imported["pair"], imported["method"], float(imported["best_mean"])) == ("res56_res20", "KD", 2.0)
    md = (root / "summary.md").read_text()
    assert f"KD [imported: {log}]" in md and "(paired)" in md
    for name in ("ablation.png", "curves.png", "swaps.png"):
        assert (root / name).stat().st_size > 0
