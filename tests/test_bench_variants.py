"""Named variants (mdistiller_configs/variants.yaml): names, expansion, run configs and
folders, and the report's comparison with a baseline (checked against scipy)."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from scipy import stats as sps

from slkd.bench import variants as V
from slkd.bench.configs import run_config
from slkd.bench.plan import plan
from slkd.bench.report import report, write_manifest
from slkd.bench.run import Options, execute
from slkd.bench.sources import Pair
from slkd.errors import BenchError
from tests.test_bench import quiet, stand_in, stand_in_runs, write_run  # noqa: F401  (stand_in: fixture)

PAIR = "res32x4_res8x4"


def names(chosen):
    return [variant.name for variant in chosen]


def test_the_file_names_every_variant_of_the_issue():
    variants, ablations = V.catalogue()
    for name in ("DKD+swap", "KD+swap", "MLKD+swap", "KD+LS", "DKD+LS", "MLKD+LS", "SLD-ts", "SLD-ss", "SLD-noswap",
                 "SLD-detach", "SLD-gamma100", "SLD-T4", "SLD-1view"):
        assert name in variants and variants[name].about, name
    assert ablations["sld"][0] == "SLD" and len(ablations["sld"]) == 8
    assert dict(variants["SLD-noswap"].overrides) == {"LOGITS.TEACHER_SWAP": False, "SLD.STUDENT_SWAP": False}
    assert (variants["DKD+LS"].config, variants["KD+LS"].config, variants["MLKD+LS"].config) == ("ls/dkd", "ls/kd", "ls/mlkd")


def test_names_resolve_with_views_and_methods_in_any_case():
    assert V.resolve("dkd").name == "DKD" and V.resolve("dkd").overrides == ()
    at2 = V.resolve("DKD@2views")
    assert (at2.name, at2.method, at2.overrides) == ("DKD@2views", "DKD", (("PROTOCOL.VIEWS", 2),))
    swap1 = V.resolve("DKD+swap@1view")
    assert swap1.overrides == (("LOGITS.TEACHER_SWAP", True), ("PROTOCOL.VIEWS", 1))
    assert V.resolve("SLD-1view").at_views(2).overrides == (("PROTOCOL.VIEWS", 2),), "the suffix replaces the variant's views"
    assert V.resolve("SLD-ts").describe() == "SLD-ts: SLD with SLD.STUDENT_SWAP False"


def test_protocol_and_ablation_expand_to_their_sets():
    assert names(V.select("KD,DKD", protocol="1,2")) == ["KD@1view", "KD@2views", "DKD@1view", "DKD@2views"]
    assert names(V.select("MLKD,SLD", protocol="1,2")) == ["MLKD@2views", "SLD@1view", "SLD@2views"], "MLKD is two-view only"
    assert names(V.select(None, ablation="sld")) == V.catalogue()[1]["sld"]
    assert names(V.select("KD,SLD", ablation="sld"))[:3] == ["KD", "SLD", "SLD-ts"], "SLD once"
    both = names(V.select(None, ablation="sld", protocol="1,2"))
    assert "SLD@1view" in both and "SLD-1view@1view" not in both and "SLD-1view@2views" not in both, "the same training once"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: V.resolve("SLD-tss"), "did you mean SLD-ts"),
        (lambda: V.resolve("nothing-like-it"), "known: KD, DKD, CRD, MLKD, SLD"),
        (lambda: V.select("KD", protocol="1,3"), "--protocol takes 1, 2 or 1,2"),
        (lambda: V.select(""), "no method or variant chosen"),
    ],
)
def test_bad_names_are_one_line_errors(call, message):
    with pytest.raises(BenchError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_a_bad_file_is_refused(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump({"variants": {"X": {"method": "FOO"}}}))
    with pytest.raises(BenchError, match="variant 'X' needs a method from KD, DKD"):
        V.catalogue(path)
    path.write_text(yaml.safe_dump({"variants": {}, "ablations": {"a": ["KD", "SLD-typo"]}}))
    with pytest.raises(BenchError, match="unknown method or variant 'SLD-typo'"):
        V.catalogue(path)


def test_a_variants_config_has_its_overrides_and_the_users_set_wins(tmp_path):
    source = tmp_path / "dkd.yaml"
    source.write_text(yaml.safe_dump({"DISTILLER": {"TYPE": "DKD", "TEACHER": "resnet32x4", "STUDENT": "resnet8x4"}, "DKD": {"T": 4.0}}))
    variant = V.resolve("DKD+swap@2views")
    config, notes = run_config("DKD", Pair(PAIR, "resnet32x4", "resnet8x4"), source, prefix=tmp_path, seed=0, epochs=None,
                               overrides=[("LOGITS.TEACHER_SWAP", False)], variant=variant)
    assert config["LOGITS"] == {"TEACHER_SWAP": False} and config["PROTOCOL"] == {"VIEWS": 2} and config["DKD"]["T"] == 4.0
    assert config["EXPERIMENT"]["PROJECT"] == f"{PAIR}/DKD+swap@2views" and config["EXPERIMENT"]["TAG"].startswith("dkd+swap@2views,")
    assert "variant DKD+swap@2views: DKD with LOGITS.TEACHER_SWAP True, PROTOCOL.VIEWS 2" in notes


def test_a_variant_with_per_pair_configs_starts_from_its_pairs_file(tmp_path):
    from slkd.bench.sources import source_config, slkd_configs

    folder = slkd_configs() / "ls" / "kd"
    assert source_config("KD", Pair("res56_res20", "resnet56", "resnet20"), tmp_path, "ls/kd") == folder / "res56_res20.yaml"
    with pytest.raises(BenchError, match="no ls/kd config for res32x4_shuv1 \\(its settings are per pair\\); pairs with one: .*res56_res20"):
        source_config("KD", Pair("res32x4_shuv1", "resnet32x4", "ShuffleV1"), tmp_path, "ls/kd")
    assert V.resolve("KD+LS").describe() == "KD+LS: KD with the ls/kd/<pair>.yaml config"


def test_a_variants_runs_live_in_its_own_folder_with_its_record(tmp_path, stand_in):  # noqa: F811
    (base,) = stand_in_runs(tmp_path, [0])
    variant = V.resolve("KD+swap")
    run = type(base)(base.pair, "KD", 0, base.source, base.prefix, tmp_path / "p" / variant.name / "seed0", variant)
    (outcome,) = execute([run], Options(device="cpu"), echo=quiet)
    assert outcome.ok and run.label == "p KD+swap seed0"
    assert json.loads((run.folder / "variant.json").read_text())["set"] == {"LOGITS.TEACHER_SWAP": True}
    written = yaml.safe_load((run.folder / "bench_config.yaml").read_text())
    assert written["LOGITS"]["TEACHER_SWAP"] is True and written["EXPERIMENT"]["PROJECT"] == "p/KD+swap"


def test_plan_places_each_variant(tmp_path, monkeypatch):
    monkeypatch.setattr("slkd.bench.plan.source_config", lambda method, pair, host, folder: Path(f"/{folder or method}.yaml"))
    runs = plan([Pair(PAIR, "t", "s")], V.select("KD,KD+swap"), [0, 1], tmp_path, tmp_path, smoke=True)
    assert [(run.name, run.method, run.source.name, run.folder.relative_to(tmp_path).as_posix()) for run in runs] == [
        ("KD", "KD", "KD.yaml", f"smoke/{PAIR}/KD/seed0"), ("KD", "KD", "KD.yaml", f"smoke/{PAIR}/KD/seed1"),
        ("KD+swap", "KD", "KD.yaml", f"smoke/{PAIR}/KD+swap/seed0"), ("KD+swap", "KD", "KD.yaml", f"smoke/{PAIR}/KD+swap/seed1"),
    ]


# --------------------------------------------------------------------------- the report's comparison
KD = {0: 73.1, 1: 73.6, 2: 72.9}
SWAP = {0: 74.0, 1: 74.9, 2: 73.8}
DKD2 = {3: 76.0, 4: 76.8}


def variant_run(root, name, method, seed, best, views=1, overrides=None):
    folder = write_run(root, PAIR, name, seed, best, best - 0.5, views=views)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["DISTILLER"]["TYPE"] = method
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides is not None:
        V.write_variant(folder / V.VARIANT_NAME, V.Variant(name, method, tuple(overrides.items())))
    return folder


@pytest.fixture
def compared(tmp_path):
    for seed, best in KD.items():
        variant_run(tmp_path, "KD", "KD", seed, best)
        variant_run(tmp_path, "KD+swap", "KD", seed, SWAP[seed], overrides={"LOGITS.TEACHER_SWAP": True})
    for seed, best in DKD2.items():
        variant_run(tmp_path, "DKD@2views", "DKD", seed, best, views=2, overrides={"PROTOCOL.VIEWS": 2})
    variant_run(tmp_path, "DKD@1view", "DKD", 0, 75.0, overrides={"PROTOCOL.VIEWS": 1})
    write_manifest(tmp_path, ["KD", "KD+swap", "DKD@1view", "DKD@2views"], "KD")
    return tmp_path


def read_rows(path):
    with open(path, newline="") as stream:
        return {row["variant"]: row for row in csv.DictReader(stream)}


def test_differences_to_the_baseline_are_scipys_intervals(compared):
    files = report(compared, echo=quiet)
    assert compared / "ablation.png" in files
    rows = read_rows(compared / "summary.csv")
    assert list(rows) == ["KD", "KD+swap", "DKD@1view", "DKD@2views"], "the run's order"
    swap, dkd2, base = rows["KD+swap"], rows["DKD@2views"], rows["KD"]
    paired = sps.ttest_rel([SWAP[s] for s in KD], [KD[s] for s in KD]).confidence_interval(0.95)
    assert swap["comparison"] == "paired" and swap["baseline"] == "KD" and swap["method"] == "KD"
    assert (float(swap["best_ci_low"]), float(swap["best_ci_high"])) == (pytest.approx(paired.low), pytest.approx(paired.high))
    welch = sps.ttest_ind(list(DKD2.values()), list(KD.values()), equal_var=False).confidence_interval(0.95)
    assert dkd2["comparison"] == "Welch"
    assert (float(dkd2["best_ci_low"]), float(dkd2["best_ci_high"])) == (pytest.approx(welch.low), pytest.approx(welch.high))
    assert float(dkd2["last_diff"]) == pytest.approx(sum(DKD2.values()) / 2 - sum(KD.values()) / 3)
    assert rows["DKD@1view"]["comparison"] == "none" and base["comparison"] == "" and base["best_diff"] == ""
    assert swap["settings"] == "LOGITS.TEACHER_SWAP True" and dkd2["views"] == "2"
    assert float(rows["DKD@1view"]["published"]) == 76.32 and dkd2["published"] == "", "DKD's number is a one-view number"
    md = (compared / "summary.md").read_text()
    assert "| res32x4_res8x4 | KD | 3 |" in md and "| baseline |" in md
    assert f"{float(swap['best_diff']):+.2f} [{paired.low:+.2f}, {paired.high:+.2f}] (paired)" in md
    assert "variant KD+swap: LOGITS.TEACHER_SWAP True." in md and "paired by seed" in md


def test_another_baseline_can_be_asked_for(compared):
    report(compared, echo=quiet, baseline="KD+swap")
    rows = read_rows(compared / "summary.csv")
    assert rows["KD"]["baseline"] == "KD+swap" and float(rows["KD"]["best_diff"]) < 0
    with pytest.raises(BenchError, match="--baseline SLD: no complete run of it under .*; variants there: DKD@1view, DKD@2views, KD, KD\\+swap"):
        report(compared, echo=quiet, baseline="SLD")


def test_ablation_groups_are_the_protocols(compared):
    from slkd.bench.plots import ablation_groups
    from slkd.bench.report import load_runs, rows

    table = rows(load_runs(compared), ["KD", "KD+swap", "DKD@1view", "DKD@2views"])
    assert [(views, [row.method for row in group]) for views, group in ablation_groups(table)] == [
        ("1", ["KD", "KD+swap", "DKD@1view"]), ("2", ["DKD@2views"]),
    ]


@pytest.mark.host
def test_every_override_is_a_key_of_the_hosts_config(host):
    cfg = host.cfg
    variants, _ = V.catalogue()
    for variant in variants.values():
        for key, _value in variant.overrides:
            node = cfg
            for part in key.split("."):
                assert part in node, f"{variant.name}: {key} is not a config key"
                node = node[part]


def test_published_numbers_follow_the_variant_and_its_protocol():
    from slkd.bench.published import TOP1
    from slkd.bench.report import published_for

    assert published_for(PAIR, "KD+LS", "KD")[0] == TOP1[PAIR]["KD+LS"] and "logit-standardization" in published_for(PAIR, "KD+LS", "KD")[1]
    assert published_for(PAIR, "MLKD+LS@2views", "MLKD")[0] == TOP1[PAIR]["MLKD+LS"], "MLKD's own protocol is two views"
    assert published_for(PAIR, "SLD@2views", "SLD") is None and published_for(PAIR, "KD@2views", "KD") is None
    assert published_for(PAIR, "KD+swap", "KD") is None, "a variant nobody published has no number"
