"""Blank views abstain: the reproduction's MVMC models scored with and without abstention.

About 40% of MVMC's camera views are black frames: the camera does not see the object
(:func:`.evaluation.blank_views`). A device CNN can only answer a black frame with the class
prior it learnt from black training frames, and average fusion counts that answer like any
other, so a frame that two cameras see and four do not is decided 2 against 4 by the prior.
Letting blank devices abstain (left out of the fusion like failed ones, unless no other
device remains) needs no training: the reproduction's checkpoints are scored again, each
seed with and without abstention, and compared with paired t-tests on the same seeds.

:func:`blank_view_study` scores the runs; :func:`write_blank_view_report` writes
``seeds.csv`` (per seed), ``summary.json`` and ``tables.md``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..perception.checkpoint import load_checkpoint
from ..perception.evaluation import blank_views, device_outputs, evaluate_failures, summarise
from ..perception.experiment import DeviceViews
from .reproduction import compare, run_dir

__all__ = ["STUDY_METRICS", "blank_share", "blank_view_study", "score_blank_abstention",
           "unseen_after_failure", "write_blank_view_report"]

STUDY_METRICS = ("no_failure", "single_failure_mean", "worst_single_failure")


def score_blank_abstention(model, test_data: DeviceViews) -> list[dict]:
    """Rows ``{fusion, modifier, blank_views, <STUDY_METRICS>}`` of one model (avg and max)."""
    probs, features = device_outputs(model, test_data.views)
    heads = [t.detach() for t in model.classifier_heads()]
    blank = blank_views(test_data.views)
    rows = []
    for policy, abstain in (("vote", None), ("abstain", blank)):
        summary = summarise(evaluate_failures(probs, features, *heads, test_data.labels,
                                              test_data.available, ("avg", "max"),
                                              abstain=abstain))
        for fusion, by_modifier in summary.items():
            for key, modifier in (("baseline", False), ("modifier", True)):
                s = by_modifier[key]
                rows.append({"fusion": fusion, "modifier": modifier, "blank_views": policy,
                             "no_failure": s["no_failure"],
                             "single_failure_mean": s["single_failure_mean"],
                             "worst_single_failure": min(s["single_failure_per_device"])})
    return rows


def blank_view_study(runs: Path, dataset: str, methods: tuple[str, ...],
                     seeds: tuple[int, ...], test_data: DeviceViews,
                     progress=None) -> list[dict]:
    """Score every finished run ``runs/<dataset>/<method>/seed<k>``; skip missing ones.

    Returns per-seed rows: :func:`score_blank_abstention` plus ``method`` and ``seed``.
    """
    rows = []
    for method in methods:
        for seed in seeds:
            checkpoint = run_dir(runs, dataset, method, seed) / "model.safetensors"
            if not (checkpoint.parent / "evaluation.json").is_file():
                continue  # not finished (training may still be under way)
            model, _ = load_checkpoint(checkpoint)
            with torch.inference_mode():
                scored = score_blank_abstention(model, test_data)
            rows += [{"method": method, "seed": seed, **r} for r in scored]
            if progress is not None:
                progress(method, seed)
    return rows


def _per_seed(rows: list[dict], method: str, fusion: str, modifier: bool,
              policy: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if (r["method"], r["fusion"], r["modifier"],
                                           r["blank_views"]) == (method, fusion, modifier,
                                                                 policy)}


def write_blank_view_report(rows: list[dict], out: Path, command: str,
                            test_data: DeviceViews, dataset: str) -> dict:
    """Write ``seeds.csv``, ``summary.json`` and ``tables.md``.

    The tables compare abstain with vote (paired t-tests) and count the frames only one
    camera sees (:func:`unseen_after_failure`).
    """
    test_samples, share = len(test_data.labels), blank_share(test_data)
    unseen = unseen_after_failure(test_data)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "seeds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    comparisons = []
    for method in methods:
        for fusion in ("avg", "max"):
            for modifier in (False, True):
                vote = _per_seed(rows, method, fusion, modifier, "vote")
                abstain = _per_seed(rows, method, fusion, modifier, "abstain")
                for metric in STUDY_METRICS:
                    comparisons.append({"method": method, "fusion": fusion,
                                        "modifier": modifier, "metric": metric,
                                        **compare(abstain, vote, metric)})
    summary = {"command": command, "dataset": dataset, "test_samples": test_samples,
               "blank_view_share": share, "unseen_after_failure": unseen,
               "comparisons": comparisons}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")

    def pm(mean: float, ci: float) -> str:
        return f"{100 * mean:.2f}" + ("" if math.isnan(ci) else f" ± {100 * ci:.2f}")

    lines = [f"# Blank views abstain ({dataset})", "",
             f"Produced by `{command}` from the reproduction's checkpoints (raw per-seed "
             f"metrics: `seeds.csv`; every comparison: `summary.json`). {test_samples} test "
             f"frames; {100 * share:.1f}% of the camera views are black. Accuracy %, "
             "mean ± half-width of the 95% t-interval over seeds; p from paired t-tests "
             "on the same seeds. *vote*: every available device counts (the protocol); "
             "*abstain*: devices with a black view are left out (unless no other is left). "
             "Worst single failure = the camera whose loss costs most (the reproduction's MVMC "
             "target: >= 98% with the Modifier, avg fusion).", "",
             "| method | fusion | Modifier | metric | vote | abstain | difference | p | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| `{c['method']}` | {c['fusion']} | {'yes' if c['modifier'] else 'no'} "
                     f"| {c['metric'].replace('_', ' ')} | {pm(c['b'], c['b_ci'])} "
                     f"| {pm(c['a'], c['a_ci'])} | {100 * c['difference']:+.2f} "
                     f"| {'-' if math.isnan(c['p']) else format(c['p'], '.2g')} "
                     f"| {len(c['seeds'])} |")
    lines += ["", "## Frames no other camera sees", "",
              "With one camera failed, these test frames are seen by none of the others "
              "(their views are black or missing). All a fusion has left for them is which "
              "cameras are black and what each device answers to a black frame. Last "
              "column: the accuracy with every other frame right and these answered with "
              "the most common class. Camera numbers count from 1, as in the other tables.",
              "", "| failed camera | frames no other camera sees | of another class | "
              "majority answer % |", "|---|---|---|---|"]
    lines += [f"| {c['camera'] + 1} | {c['unseen_frames']} | {c['not_majority']} "
              f"| {100 * c['majority_answer']:.2f} |" for c in unseen]
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    return summary


def unseen_after_failure(test_data: DeviceViews) -> list[dict]:
    """Per camera: test frames that no other camera sees (all others black or missing).

    With that camera failed, nothing that is left has seen the object; all a fusion has
    is which cameras are black, and their answers to black frames. ``majority_answer`` is
    the accuracy of answering those frames with the split's most common class (and every
    other frame right): what losing that camera costs at least, unless the fusion reads
    the pattern of black views.
    """
    seen = test_data.available & ~blank_views(test_data.views)
    majority = int(np.bincount(test_data.labels).argmax())
    rows = []
    for camera in range(seen.shape[1]):
        others = np.delete(seen, camera, axis=1)
        unseen = ~others.any(axis=1)
        wrong = int((test_data.labels[unseen] != majority).sum())
        rows.append({"camera": camera, "unseen_frames": int(unseen.sum()),
                     "not_majority": wrong, "majority_answer": 1 - wrong / len(test_data.labels)})
    return rows


def blank_share(test_data: DeviceViews) -> float:
    """Share of the available views that are black."""
    blank = blank_views(test_data.views) & test_data.available
    return float(blank.sum() / max(test_data.available.sum(), 1))
