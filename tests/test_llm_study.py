"""The LLM study: the report's intervals and verdicts (computed from the numbers, flipping
when they flip), the fields of results.json, early-stopped specialists, the specialist-cost
command on a tiny config, and the small-cpu and gpu-study configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_helpers import SIZES, tiny_config_dict, write_suite_small, write_toml

from amasim.driver import learning_rate_at
from amasim.stats import LLM_EXCESS_MARGIN, interval
from llm.config import StageSection, load_config
from llm.pipeline import run_pipeline
from llm.report import (
    CLAIMS,
    claims_over_instances,
    difference_panels,
    read_results,
    summarize,
    summary_table,
    verdict_table,
)
from llm.stages.specialists import stopped_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "llm" / "configs"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --------------------------------------------------------------------- the statistics
def test_interval_is_a_student_t_interval():
    row = interval([0.2, 0.4, 0.3, 0.5, 0.1])
    sd = float(np.std([0.2, 0.4, 0.3, 0.5, 0.1], ddof=1))
    assert row["mean"] == pytest.approx(0.3) and row["std"] == pytest.approx(sd)
    assert row["ci95"] == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-5)  # t(.975, 4)
    assert interval([0.7])["ci95"] is None  # no interval from one seed
    with pytest.raises(ValueError, match="not finite"):
        interval([0.1, float("nan")], "ama-r: worst-task excess")


def test_verdicts_follow_the_numbers():
    """Paired by seed: a clear winner holds, the swapped claim is reversed, exact match
    (higher is better) reads the same numbers the other way; the family is every claim ×
    metric of the report."""
    low, high = [0.10, 0.12, 0.11, 0.09, 0.10], [0.50, 0.52, 0.49, 0.51, 0.50]
    summary = summarize(
        fake_results({"ama-r": low, "uniform": high}, matches={"ama-r": low, "uniform": high})
    )
    assert verdicts_of(summary, "AMA-R beats uniform mixing") == {"uniform": "holds"}
    assert verdicts_of(summary, "AMA-R beats uniform mixing", "worst-task exact match") == {
        "uniform": "reversed"
    }
    assert {v["family"]["tests"] for v in summary["verdicts"]} == {2}


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.floats(0, 2), min_size=2, max_size=8),
    b=st.lists(st.floats(0, 2), min_size=2, max_size=8),
)
def test_swapping_the_methods_mirrors_the_verdict(a, b):
    """A beats B exactly when B loses to A: the verdict is a function of the paired numbers,
    antisymmetric in the two methods."""
    n = min(len(a), len(b))
    forward = summarize(fake_results({"ama-r": a[:n], "uniform": b[:n]}))["verdicts"][0]
    backward = summarize(fake_results({"ama-r": b[:n], "uniform": a[:n]}))["verdicts"][0]
    assert forward["estimate"] == pytest.approx(-backward["estimate"], abs=1e-12)
    assert forward["p"] == pytest.approx(backward["p"], abs=1e-12)
    mirror = {"holds": "reversed", "reversed": "holds", "n.s.": "n.s."}
    if abs(forward["p_holm"] - 0.05) > 1e-9:  # not on the boundary
        assert backward["verdict"] == mirror[forward["verdict"]]


def test_noninferiority_has_a_margin_and_pairs_by_seed():
    """AMA-S a little worse than AMA-R on every seed, by less than the margin: non-inferior;
    worse by more than the margin: reversed. Seeds present for one method only are dropped."""
    r = [0.30, 0.45, 0.38, 0.52, 0.41]
    close = [v + LLM_EXCESS_MARGIN / 4 for v in r]
    far = [v + 4 * LLM_EXCESS_MARGIN for v in r]
    statement = "AMA-S is at least as good as AMA-R"
    for ama_s, expected in ((close, "holds"), (far, "reversed")):
        results = fake_results({"ama-r": r, "ama-s": ama_s})
        results["runs"]["ama-s"].append({**results["runs"]["ama-s"][0], "seed": 99})
        summary = summarize(results)
        (v,) = [v for v in summary["verdicts"] if v["metric"] == "worst-task excess"]
        assert v["statement"] == statement and v["margin"] == LLM_EXCESS_MARGIN
        assert v["verdict"] == expected and v["paired_seeds"] == [0, 1, 2, 3, 4]


def test_item_values_add_evaluation_noise():
    """Runs with per-item values: the interval widens by the item bootstrap's variance."""
    rng = np.random.default_rng(0)
    results = fake_results({"ama-r": [0.1, 0.12, 0.11], "uniform": [0.3, 0.33, 0.31]})
    plain = summarize(results)["verdicts"][0]
    for method, shift in (("ama-r", 0.1), ("uniform", 0.3)):
        for run in results["runs"][method]:
            items = shift + rng.normal(0, 0.3, 100)
            run["tasks"]["a"]["items"] = {"clipped": items.tolist()}
            run["tasks"]["a"]["clipped"] = run["worst_task_excess"] = float(items.mean())
    noisy = summarize(results)["verdicts"][0]
    assert plain["evaluation_noise"] == "not included"
    assert noisy["evaluation_noise"] == "item bootstrap"
    width = [v["interval"][1] - v["interval"][0] for v in (plain, noisy)]
    assert width[1] > width[0]


def fake_results(values: dict[str, list[float]], matches: dict[str, list[float]] | None = None):
    """A results record with one task, whose worst-task excess per seed is ``values``."""
    runs = {}
    for method, per_seed in values.items():
        em = (matches or {}).get(method, [0.5] * len(per_seed))
        runs[method] = [
            {
                "seed": seed,
                "steps": 10,
                "worst_task_excess": v,
                "tasks": {"a": {"clipped": v, "accuracy": 0.5, "exact_match": m}},
            }
            for seed, (v, m) in enumerate(zip(per_seed, em))
        ]
    return {"tasks": ["a"], "sizes": [3], "seeds": [0, 1, 2], "runs": runs}


def verdicts_of(summary, statement, metric="worst-task excess"):
    return {
        v["worse_method"]: v["verdict"]
        for v in summary["verdicts"]
        if v["statement"] == statement and v["metric"] == metric
    }


def test_summary_verdicts_flip_when_the_numbers_do():
    good, bad = [0.10, 0.11, 0.12], [0.40, 0.41, 0.42]
    summary = summarize(fake_results({"ama-r": good, "uniform": bad, "stratified": bad}))
    assert verdicts_of(summary, "AMA-R beats uniform mixing") == {"uniform": "holds"}
    flipped = summarize(fake_results({"ama-r": bad, "uniform": good, "stratified": bad}))
    assert verdicts_of(flipped, "AMA-R beats uniform mixing") == {"uniform": "reversed"}
    assert verdicts_of(flipped, "AMA-R beats stratified mixing") == {"stratified": "n.s."}
    # only the claims whose methods ran are judged
    assert {v["better"] for v in summary["verdicts"]} == {"ama-r"}
    assert summary["methods"]["ama-r"]["worst_task_excess"]["mean"] == pytest.approx(0.11)


def test_the_best_merge_is_the_lowest_merge_and_exact_match_has_its_own_verdict():
    results = fake_results(
        {
            "ama-s": [0.2, 0.21, 0.22],
            "merge-linear": [0.3, 0.3, 0.3],  # deterministic: no spread
            "merge-ties": [0.9, 0.9, 0.9],
        },
        matches={"ama-s": [0.1, 0.1, 0.12], "merge-linear": [0.6, 0.6, 0.6]},
    )
    summary = summarize(results)
    assert summary["best_merge"] == "merge-linear"
    statement = "AMA-S beats the best merge"
    assert verdicts_of(summary, statement) == {"merge-linear": "holds"}
    assert verdicts_of(summary, statement, "worst-task exact match") == {"merge-linear": "reversed"}
    table = verdict_table(summary)
    assert "| AMA-S beats the best merge | merge-linear | worst-task excess |" in table
    assert "**reversed**" in table and "**holds**" in table


def test_claims_over_instances_count_and_sign_test():
    """Six instances where AMA-R beats uniform on every seed: the claim agrees, with a
    sign test of 6 for and 0 against; the records name their instance."""
    rng = np.random.default_rng(1)
    instances = {
        f"synth{i}": fake_results(
            {"ama-r": list(0.1 + rng.random(5) * 0.01), "uniform": list(0.5 + rng.random(5) * 0.01)}
        )
        for i in range(6)
    }
    study = claims_over_instances(instances)
    (row,) = [c for c in study["claims"] if c["claim"].endswith("(worst-task excess)")]
    assert row["verdict"] == "agrees" and row["instances"] == 6
    assert row["sign_test"] == {"favour": 6, "against": 0, "ties": 0, "p": 0.03125}
    assert [r["instance"] for r in row["records"]] == list(instances)


def test_claims_cover_the_seed_claims_and_the_rival():
    pairs = {(c.better, c.worse) for c in CLAIMS}
    for ama in ("ama-r", "ama-s"):
        for other in ("uniform", "stratified", "best-merge", "gr-dpo"):
            assert (ama, other) in pairs
    assert [c.noninferior for c in CLAIMS if (c.better, c.worse) == ("ama-s", "ama-r")] == [True]


def test_summary_table_shows_intervals_and_difference_panels_are_from_stratified():
    results = fake_results({"stratified": [0.3, 0.32, 0.31], "ama-r": [0.1, 0.12, 0.11]})
    table = summary_table(results)
    assert "95% CI (Student t) over 3 seeds" in table
    ci = interval([0.1, 0.12, 0.11])["ci95"]
    assert f"| ama-r | 10 | 0.1100 ± {ci:.4f} |" in table
    panels = difference_panels(results)
    assert set(panels["worst-task excess"]) == {"ama-r"}  # stratified is the zero line
    mean, half = panels["worst-task excess"]["ama-r"]
    assert mean == pytest.approx(-0.2) and half > 0
    assert difference_panels(fake_results({"ama-r": [0.1, 0.2]})) == {}  # no stratified run


# ------------------------------------------------------------------ early stopping
@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 500),
    fraction=st.floats(0.01, 1.0),
    rate=st.floats(1e-5, 1.0),
    schedule=st.sampled_from(["constant", "1/sqrt(T)", "1/sqrt(t)"]),
)
def test_a_stopped_stage_is_the_prefix_of_the_full_run(steps, fraction, rate, schedule):
    """Every learning rate of the stopped run is the full run's at the same step."""
    full = StageSection(steps=steps, learning_rate=rate, schedule=schedule)
    stopped = stopped_stage(full, fraction)
    assert 1 <= stopped.steps <= steps
    for t in range(0, stopped.steps, max(1, stopped.steps // 7)):
        assert learning_rate_at(stopped.learning_rate, schedule, t, stopped.steps) == pytest.approx(
            learning_rate_at(rate, schedule, t, steps), rel=1e-12
        )


def test_stopped_stage_refuses_shares_outside_the_unit_interval():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            stopped_stage(StageSection(), bad)


# -------------------------------------------------------------- the pipeline records
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """One tiny pipeline run with a merge, stratified and AMA (two seeds)."""
    folder = tmp_path_factory.mktemp("study")
    manifest = write_suite_small(folder / "data")
    sections = tiny_config_dict(folder / "out", manifest)
    sections["run"]["methods"] = ["stratified", "ama-r", "ama-s", "merge-linear"]
    sections["data"]["validation"] = 0.2  # the study's tuning selects on it
    config = write_toml(folder / "config.toml", sections)
    run_pipeline(load_config(config), progress=False)
    return folder


def test_results_json_has_seeds_specialist_exact_match_and_verdicts(tiny_study):
    out = tiny_study / "out"
    results = read_results(out / "results.json")
    assert results["seeds"] == [0, 1]
    assert set(results["specialist_exact_match"]) == set(SIZES)
    assert all(0.0 <= v <= 1.0 for v in results["specialist_exact_match"].values())
    summary = results["summary"]
    assert set(summary["methods"]) == {"stratified", "ama-r", "ama-s", "merge-linear"}
    judged = {(v["statement"], v["metric"]) for v in summary["verdicts"]}
    assert ("AMA-S is at least as good as AMA-R", "worst-task exact match") in judged
    assert ("AMA-R beats the best merge", "worst-task excess") in judged
    assert {v["verdict"] for v in summary["verdicts"]} <= {"holds", "reversed", "n.s."}
    # the summary is the statistics of the runs, recomputed
    assert summarize(results)["verdicts"] == summary["verdicts"]
    text = (out / "results.md").read_text()
    for section in ("## Per task", "## Specialists", "## Verdicts", "## Tuning protocol"):
        assert section in text
    assert (out / "differences.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_specialist_exact_match_is_cached_with_the_specialists(tiny_study):
    cache = tiny_study / "out" / "cache"
    assert len(list(cache.glob("exact-match-*.npz"))) == len(SIZES)


# ------------------------------------------------------------------- specialist cost
def test_specialist_cost_command_on_a_tiny_config(tiny_study, tmp_path, capsys):
    from llm.cli import main

    config = tiny_study / "config.toml"
    out = tmp_path / "cost"
    assert (
        main(
            [
                "specialist-cost",
                "--config",
                str(config),
                "--out",
                str(out),
                "--fractions",
                "0.4,1",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    study = read_results(out / "specialist_cost.json")
    labels = [(r["specialists"], r["method"]) for r in study["rows"]]
    assert labels == [
        (label, m) for label in ("reference", "40%", "100%") for m in ("ama-r", "ama-s")
    ]
    spec = study["specialists"]
    batch, k = 4, len(SIZES)
    assert [spec[s]["steps"] for s in ("reference", "40%", "100%")] == [0, 2, 5]
    assert spec["40%"]["examples"] == 2 * batch * k and spec["reference"]["examples"] == 0
    # the yardstick: every row is scored against the full specialists
    assert all(v["full_eval_loss"] == spec["100%"]["eval_loss"] for v in spec.values())
    # the reference as specialist: its own losses, log 2 under the sigmoid DPO loss
    for loss in spec["reference"]["eval_loss"].values():
        assert loss == pytest.approx(math.log(2), abs=1e-5)
    for row in study["rows"]:
        assert len(row["worst_task"]["values"]) == 2 and row["worst_task"]["ci95"] is not None
    assert (out / "specialist_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| reference | 0 | ama-r |" in (out / "specialist_cost.md").read_text()


def test_the_full_specialist_row_equals_the_pipeline_run_in_the_same_folder(tiny_study, tmp_path):
    """With the pipeline's own --out, the 100% row is the pipeline's AMA (cached runs)."""
    import shutil

    from llm.specialist_cost import specialist_cost

    folder = tmp_path / "copy"
    shutil.copytree(tiny_study, folder)
    sections = tiny_config_dict(folder / "out", folder / "data" / "tasks.toml")
    sections["data"]["validation"] = 0.2  # the fixture's data
    config = write_toml(folder / "config2.toml", sections)
    study = specialist_cost(load_config(config), fractions=(1.0,), progress=False)
    pipeline = read_results(folder / "out" / "results.json")["runs"]
    for method in ("ama-r", "ama-s"):
        got = [r["worst_task_excess"] for r in study["runs"]["100%"][method]]
        assert got == [r["worst_task_excess"] for r in pipeline[method]]


def test_specialist_cost_refuses_bad_fractions(tiny_study):
    from llm.specialist_cost import specialist_cost

    cfg = load_config(tiny_study / "config.toml")
    with pytest.raises(ValueError, match="lacks 1"):
        specialist_cost(cfg, fractions=(0.5,), progress=False)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        specialist_cost(cfg, fractions=(0.0, 1.0), progress=False)


# --------------------------------------------------------------------------- configs
def test_small_cpu_config_loads_and_runs_the_study():
    cfg = load_config(CONFIGS / "small-cpu.toml")
    assert cfg.data.suite == "learnable" and len(cfg.run.seeds) >= 5
    for method in (
        "uniform",
        "stratified",
        "group-dro",
        "doremi",
        "ama-r",
        "ama-s",
        "ama-s-ix",
        "gr-dpo",
    ):
        assert method in cfg.run.methods
    assert any(m.startswith("merge-") for m in cfg.run.methods)
    assert cfg.mix.tuning == "theory"  # each method by its own theorem (the study tunes)
    assert 0 < cfg.data.validation < 0.5  # the split the study's tuning selects on


def test_gpu_study_config_passes_validation_on_a_cpu():
    cfg = load_config(CONFIGS / "gpu-study.toml")
    assert cfg.run.device == "cuda" and cfg.run.dtype == "bfloat16"
    n, d = cfg.model.n_layer, cfg.model.n_embd
    assert 0.1e9 <= 12 * n * d * d <= 0.5e9  # ~0.1–0.5B parameters in the blocks
    small = load_config(CONFIGS / "small-cpu.toml")
    assert cfg.run.methods == small.run.methods and cfg.mix.tuning == small.mix.tuning


def test_reproduce_llm_publishes_the_study_under_the_readme_names(tiny_study, tmp_path):
    # `amasim reproduce --llm` (llm.study.publish_study): the study over instances and the
    # first instance's specialist cost under OUT/runs, the tables and figures copied where
    # the README links them.
    from llm.study import publish_study

    out = tmp_path / "published"
    written = publish_study(out, config=tiny_study / "config.toml", instances=2)
    run = out / "runs" / "llm-config"
    expected = {
        "results/llm_study.md": "study.md",
        "results/llm_study.json": "study.json",
        "results/llm_config.md": "instance-0/results.md",
        "results/llm_config.json": "instance-0/results.json",
        "figures/llm_config_weights.png": "instance-0/weights.png",
        "figures/llm_config_differences.png": "instance-0/differences.png",
        "results/llm_specialist_cost.json": "instance-0/specialist_cost.json",
        "figures/llm_specialist_cost.png": "instance-0/specialist_cost.png",
    }
    for target, source in expected.items():
        assert out / target in written, target
        assert (out / target).read_bytes() == (run / source).read_bytes(), target
    assert not list(out.rglob(".*.tmp"))


def test_specialist_cost_without_greedy_decoding(tiny_study, tmp_path):
    # [eval] generate = 0: the study runs and reports no exact match (no KeyError after
    # the first variant's generalists, which would have lost them).
    import dataclasses

    from llm.specialist_cost import specialist_cost, write_specialist_cost

    cfg = load_config(tiny_study / "config.toml")
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, out=str(tmp_path / "cost"), seeds=(0, 1)),
        eval=dataclasses.replace(cfg.eval, generate=0),
    )
    study = specialist_cost(cfg, fractions=(1.0,), methods=("ama-r",), progress=False)
    assert all(row["mean_exact_match"] is None for row in study["rows"])
    paths = write_specialist_cost(study, tmp_path / "cost")
    assert "| reference | 0 | ama-r |" in paths[1].read_text()
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
