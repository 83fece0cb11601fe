"""The gated Modifier: options switched on per failed set only where validation data says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resilient_perception.cli import main
from resilient_perception.paper.gated_modifier import (
    GATE_AVERAGE,
    GATE_OPTIONS,
    cross_fitted,
    fit_gate,
    gated_correctness,
    gated_stem,
    mcnemar,
)
from resilient_perception.perception.checkpoint import load_checkpoint
from resilient_perception.perception.surrogate_gate import SurrogateGate, SurrogateGateError
from resilient_perception.perception.validation import holdout_split
from test.conftest import DATA_ROOT, needs_data


def test_mcnemar_counts_only_discordant_samples():
    a = np.array([True] * 30 + [False] * 5 + [True] * 100)
    b = np.array([False] * 30 + [True] * 5 + [True] * 100)
    assert mcnemar(a, b) < 1e-4 < 0.99 < mcnemar(b, a)
    assert mcnemar(a, a) == 1.0


def as_probabilities(correct: np.ndarray, margin: float = 0.2) -> np.ndarray:
    """Two-class probabilities whose argmax is right (class 0) where ``correct`` is True."""
    right = 0.5 + np.where(correct, margin, -margin) / 2
    return np.stack([right, 1 - right], axis=-1)


def fit_on_correctness(correct: dict, subsets: list, **kwargs) -> dict:
    labels = np.zeros(next(iter(correct.values())).shape[1], dtype=int)
    return fit_gate({name: as_probabilities(c) for name, c in correct.items()}, labels,
                    subsets, **kwargs)


def test_gate_switches_an_option_on_only_where_it_clearly_helps():
    rng = np.random.default_rng(0)
    base = rng.random((3, 2000)) < 0.7
    helps, noise, hurts = base.copy(), base.copy(), base.copy()
    helps[0, np.flatnonzero(~base[0])[:200]] = True  # +10 points on set 0
    noise[1, np.flatnonzero(~base[1])[:3]] = True  # +0.15 points on set 1: not significant
    hurts[2, np.flatnonzero(base[2])[:100]] = False  # -5 points on set 2
    subsets = [(0,), (1,), (2,)]
    gate = fit_on_correctness({"none": base, "modifier": helps, "confidence": noise,
                               "affine": hurts}, subsets)
    assert gate == {(0,): ("modifier",), (1,): (), (2,): ()}


def test_evidence_too_thin_for_one_failed_set_is_pooled_over_sets_of_its_size():
    # Five single failures of 300 validation samples: on four the Modifier wins 4 and
    # loses 1 (p = 0.19 each, no set passes alone), on the fifth it wins 1 and loses 3.
    # Pooled, 17 wins against 7 losses pass (p = 0.03); the fifth set keeps no Modifier, as
    # its own samples say the Modifier is worse there. The no-failure set is its own pool.
    subsets = [(), (0,), (1,), (2,), (3,), (4,)]
    base = np.zeros((6, 300), dtype=bool)
    base[:, :200] = True
    modifier = base.copy()
    for row, (wins, losses) in enumerate([(0, 0), (4, 1), (4, 1), (4, 1), (4, 1), (1, 3)]):
        modifier[row, 200:200 + wins] = True
        modifier[row, :losses] = False
    gate = fit_on_correctness({"none": base, "modifier": modifier}, subsets)
    modifier = ("modifier",)
    assert gate == {(): (), (0,): modifier, (1,): modifier, (2,): modifier, (3,): modifier,
                    (4,): ()}


def test_the_gate_averages_the_most_accurate_options_that_pass():
    # Two classes, 1,000 validation samples; no failure (row 0) every option is right.
    # One failure (row 1): plain fusion is right on samples 0-599. "a" is right on 0-799,
    # surely on 0-399, barely elsewhere; "b" is right on 200-999, surely on 600-999, barely
    # elsewhere. Each is 80% right alone; their mean is right on all 1,000 (one of them is
    # sure wherever the other is wrong). "weak" (65%) passes too but is third.
    index = np.arange(1000)
    labels = np.zeros(1000, dtype=int)

    def option(right: np.ndarray, sure: np.ndarray | None = None) -> np.ndarray:
        p_right = np.where(right, np.where(sure, 0.9, 0.55) if sure is not None else 0.6,
                           0.45)
        one_failure = np.stack([p_right, 1 - p_right], axis=-1)
        return np.stack([as_probabilities(np.ones(1000, dtype=bool)), one_failure])

    probs = {"none": option(index < 600), "a": option(index < 800, index < 400),
             "b": option(index >= 200, index >= 600), "weak": option(index < 650)}
    subsets = [(), (0,)]
    gate = fit_gate(probs, labels, subsets)
    assert GATE_AVERAGE == 2 and gate[()] == () and set(gate[(0,)]) == {"a", "b"}
    assert gated_correctness(probs, labels, gate, subsets)[1].mean() == 1.0
    one = fit_gate(probs, labels, subsets, average=1)
    assert len(one[(0,)]) == 1
    assert gated_correctness(probs, labels, one, subsets)[1].mean() == pytest.approx(0.8)
    # Judged on halves of the validation split alone, two averaged beat one here as well.
    judged = cross_fitted(probs, labels, subsets, averages=(1, 2))
    assert judged["no_failure"] == 1.0 and judged["single_failure_none"] == pytest.approx(0.6)
    assert judged["single_failure"]["2"] == 1.0 > judged["single_failure"]["1"]


def test_holdout_split_is_fixed_and_disjoint():
    fit, val = holdout_split(100, 10)
    assert len(val) == 10 and not set(fit) & set(val) and len(fit) + len(val) == 100
    assert np.array_equal(holdout_split(100, 10)[1], val)
    with pytest.raises(ValueError, match="0..99"):
        holdout_split(100, 100)


@needs_data
def test_evaluate_gated_end_to_end(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "--limit", "1500", "--holdout", "500", "--epochs", "1",
                 "--fused-mode", "geo", "--threads", "1", "--out", str(out),
                 "--data-root", str(DATA_ROOT)]) == 0
    checkpoint = str(out / "model.safetensors")
    assert load_checkpoint(checkpoint)[1]["train_config"]["fused_mode"] == "geo"
    assert main(["evaluate", checkpoint, "--limit", "500", "--modes", "avg", "geo",
                 "--gated", "avg", "geo", "--data-root", str(DATA_ROOT),
                 "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "gated.json").read_text())
    # Each pooling has a gate of its own, and its plain fusion scores as `evaluate` does.
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())["summary"]
    for mode in ("avg", "geo"):
        gated = json.loads((tmp_path / "e" / f"{gated_stem(mode)}.json").read_text())
        assert gated["mode"] == mode
        for key in ("no_failure", "single_failure_mean"):
            assert gated["summary"]["none"][key] == pytest.approx(
                summary[mode]["baseline"][key], abs=1e-9)
            assert gated["summary"]["modifier"][key] == pytest.approx(
                summary[mode]["modifier"][key], abs=1e-9)
    assert "geo fusion" in (tmp_path / "e" / "gated-geo.md").read_text()
    # The gate the fusion node applies: plain surrogates or none per failed set, scored as
    # the option it chose for that set.
    geo = json.loads((tmp_path / "e" / "gated-geo.json").read_text())
    node_gate = SurrogateGate.load(tmp_path / "e" / "gated-geo.json", "geo", 6)
    assert len(node_gate.failed_sets) == 62  # every failed set with a live device
    for failed, allowed in node_gate.failed_sets.items():
        chosen = geo["options"]["modifier" if allowed else "none"]["by_failed_set"][failed]
        assert geo["summary"]["surrogate_gated"]["by_failed_set"][failed] == chosen
    assert "surrogate_gated vs none" in geo["tests"]
    with pytest.raises(SurrogateGateError, match="fitted for fusion mode 'avg'"):
        SurrogateGate.load(tmp_path / "e" / "gated.json", "geo", 6)
    assert result["fit_samples"] == 1000 and result["validation_samples"] == 500
    assert set(result["summary"]) == {"none", "modifier", "gated", "surrogate_gated"}
    assert len(result["gate"]) == 63 and result["average"] == GATE_AVERAGE
    assert all(len(chosen) <= GATE_AVERAGE for chosen in result["gate"].values())
    assert result["options_used"]["none"] == sum(not c for c in result["gate"].values())
    # Every option is scored alone. Where the gate chose no option, gated and none are the
    # same predictions; where it chose one, that option's.
    none, gated = result["summary"]["none"], result["summary"]["gated"]
    options = result["options"]
    assert set(options) == {o.name for o in GATE_OPTIONS}
    assert options["none"] == none and options["modifier"] == result["summary"]["modifier"]
    for failed, chosen in result["gate"].items():
        if len(chosen) < 2:
            alone = options[chosen[0]] if chosen else none
            assert gated["by_failed_set"][failed] == alone["by_failed_set"][failed]
    assert set(result["cross_fitted"]["single_failure"]) == {"1", "2", "3"}
    md = (tmp_path / "e" / "gated.md").read_text()
    assert "gated vs none" in md and "| affine+calibrated |" in md

    plain = tmp_path / "plain"
    assert main(["train", "--limit", "300", "--epochs", "1", "--threads", "1",
                 "--out", str(plain), "--data-root", str(DATA_ROOT)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(plain / "model.safetensors"), "--gated", "--limit", "100",
                 "--data-root", str(DATA_ROOT)]) == 2
    assert "--holdout" in capsys.readouterr().err


def test_gated_report_pairs_seeds(tmp_path):
    from resilient_perception.paper.accuracy_report import gated_report

    for seed, (none, plain, gated) in enumerate([(0.90, 0.89, 0.905), (0.91, 0.90, 0.912),
                                                 (0.92, 0.915, 0.921)]):
        folder = tmp_path / "mnist" / "ours" / f"seed{seed}" / "eval-test"
        folder.mkdir(parents=True)
        summary = {name: {"no_failure": 0.95, "single_failure_mean": value}
                   for name, value in (("none", none), ("modifier", plain), ("gated", gated))}
        (folder / "gated.json").write_text(json.dumps({"summary": summary,
                                                       "average": GATE_AVERAGE}))
    # A seed gated by the earlier gate (one option per failed set) is listed, not counted.
    earlier = tmp_path / "mnist" / "ours" / "seed3" / "eval-test"
    earlier.mkdir(parents=True)
    (earlier / "gated.json").write_text(json.dumps({"summary": summary}))
    table = gated_report(tmp_path)
    assert "| mnist | ours | 3 | 95.00 ± 0.00 | 91.00 ± 2.48 |" in table
    assert "| +0.27 |" in table
    assert "Left out, gated by an earlier gate" in table and "seed3" in table
    assert "best option per set" not in table  # these seeds kept no per-option scores


def test_gated_report_bounds_the_gate_by_the_best_option_per_set(tmp_path):
    from resilient_perception.paper.accuracy_report import gated_report

    def summary(by_set: dict) -> dict:  # failed set -> accuracy; "" is no failure
        singles = [v for k, v in by_set.items() if k]
        return {"no_failure": by_set[""], "single_failure_mean": float(np.mean(singles)),
                "by_failed_set": by_set}

    # No failure 0.95, one failure 0.90 without a Modifier: a cost of 5 points. Option "a"
    # recovers device 0's loss fully, "b" device 1's; the gate picks "a" on both sets.
    options = {"none": summary({"": 0.95, "0": 0.90, "1": 0.90}),
               "a": summary({"": 0.95, "0": 0.95, "1": 0.89}),
               "b": summary({"": 0.95, "0": 0.88, "1": 0.95})}
    result = {"summary": {"none": options["none"], "modifier": options["a"],
                          "gated": summary({"": 0.95, "0": 0.95, "1": 0.90})},
              "options": options, "average": GATE_AVERAGE,
              # On validation halves: no failure 0.96, one failure 0.92 without an option.
              "cross_fitted": {"no_failure": 0.96, "single_failure_none": 0.92,
                               "single_failure": {"1": 0.94, "2": 0.95}}}
    folder = tmp_path / "idx" / "defaults" / "seed0" / "eval-test"
    folder.mkdir(parents=True)
    (folder / "gated.json").write_text(json.dumps(result))
    table = gated_report(tmp_path)
    assert "| dataset | method | seeds | a | b | gated | best option per set |" in table
    # a: (0.92 - 0.90) / 0.05 = 40%; b: 30%; gated: 50%; best per set (0.95, 0.95): 100%.
    assert "| idx | defaults | 1 | 40% | 30% | 50% | 100% |" in table
    # Cross-fitted: one averaged (0.94 - 0.92) / 0.04 = 50%, two 75%.
    assert "| idx | defaults | 1 | 50% | 75% |" in table


def test_gated_report_compares_a_pooling_with_avg_on_the_same_seeds(tmp_path):
    from resilient_perception.paper.accuracy_report import gated_report

    def write(seed: int, mode: str, no_failure: float, none: float, gated: float,
              method: str = "ours") -> None:
        folder = tmp_path / "mvmc" / method / f"seed{seed}" / "eval-test"
        folder.mkdir(parents=True, exist_ok=True)
        summary = {name: {"no_failure": no_failure, "single_failure_mean": value}
                   for name, value in (("none", none), ("modifier", none), ("gated", gated),
                                       ("surrogate_gated", none))}
        (folder / f"{gated_stem(mode)}.json").write_text(json.dumps(
            {"mode": mode, "summary": summary, "average": GATE_AVERAGE}))

    # geo beats avg by 5, 4 and 6 points with no failure; single failures by 1, 2 and 3.
    for seed, (avg, geo) in enumerate([(0.93, 0.98), (0.94, 0.98), (0.92, 0.98)]):
        write(seed, "avg", avg, 0.95, 0.95)
        write(seed, "geo", geo, 0.96 + 0.01 * seed, 0.96 + 0.01 * seed)
    write(3, "avg", 0.5, 0.5, 0.5)  # a seed gated in avg only is not paired
    # Another method on two of the seeds: paired with the first by seed, pooling by pooling.
    for seed, no_failure in ((0, 0.95), (1, 0.96)):
        write(seed, "avg", no_failure, 0.95, 0.95, method="ours-geo")
    table = gated_report(tmp_path)
    assert "| mvmc | avg | ours-geo - ours | 2 | +2.00 | nan | +0.00 |" in table
    assert "## Pooled by geo" in table and "## Pooled by max" not in table
    row = next(line for line in table.splitlines() if line.startswith("| mvmc | ours | 3 | +"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "+5.00" and cells[5] == cells[7] == "+2.00"
    assert 0 < float(cells[4]) < 0.05 and 0 < float(cells[6]) < 0.2
    # The geo table's last column: the node's gate (surrogates or none) over the seeds.
    geo_row = next(line for line in table.split("## Pooled by geo")[1].splitlines()
                   if line.startswith("| mvmc | ours | 3 | 98.00"))
    assert geo_row.endswith("| 97.00 ± 2.48 |")


def test_a_surrogate_gate_file_is_checked_against_the_node_it_serves(tmp_path):
    path = tmp_path / "gated-geo.json"
    record = {"mode": "geo", "n_devices": 3, "failed_sets": {"0": True, "1": False,
                                                          "0,1": False}}
    path.write_text(json.dumps({"surrogate_gate": record}))
    gate = SurrogateGate.load(path, "geo", 3)
    assert gate.allows((0,)) and not gate.allows((1,)) and not gate.allows((1, 0))
    assert gate.allows((2,)) and gate.withheld == 2  # an unlisted set keeps its surrogates
    for mode, devices, message in (("avg", 3, "fitted for fusion mode 'geo'"),
                                   ("geo", 6, "for 3 devices, the node has 6")):
        with pytest.raises(SurrogateGateError, match=message):
            SurrogateGate.load(path, mode, devices)
    with pytest.raises(SurrogateGateError, match="no such file.*--gated geo"):
        SurrogateGate.load(tmp_path / "missing.json", "geo", 3)
    path.write_text(json.dumps({"summary": {}}))  # a gated result from before the node gate
    with pytest.raises(SurrogateGateError, match="not a gated result with a surrogate gate"):
        SurrogateGate.load(path, "geo", 3)
