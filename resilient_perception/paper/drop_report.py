"""Markdown and a figure from drop-study results (``drop_study.json`` of ``drop-study``).

:func:`drop_study_markdown` renders one model's Tables I and II; :func:`report_markdown`
puts several models side by side with the paper's stated findings and summary statistics
of how gracefully each degrades; :func:`plot_dc_accuracy` draws the per-block accuracy with
the residual branch dropped. Every number comes from the JSON; nothing is typed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from ..placement.block_profile import BlockProfile, load_profile
from ..placement.resnet import ResNet, profile_blocks

__all__ = [
    "PAPER",
    "degradation_summary",
    "drop_study_markdown",
    "plot_dc_accuracy",
    "read_study",
    "report_markdown",
]

PAPER = {
    "model": "ResNet-50, ImageNet-pretrained, fine-tuned 30 epochs on CIFAR-10 upsampled to "
             "224x224 (SGD, momentum 0.9, lr 0.01, batch 512)",
    "clean_accuracy": 0.9473,
    "table2_threshold": 0.80,
}
"""What the paper states in its text (its Tables I and II are images, absent from the text)."""

_STUDY_KEYS = ("name", "samples", "clean_accuracy", "model", "history", "table1", "table2")


def read_study(folder: Path) -> dict:
    """Read ``<folder>/drop_study.json`` and its ``profile.json`` (under key ``"profile"``).

    Raises ``ValueError`` saying what is wrong.
    """
    path = Path(folder) / "drop_study.json"
    try:
        study = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a drop-study result ({exc}); run "
                         "`resilient-perception drop-study CHECKPOINT --out FOLDER` first") from exc
    missing = [key for key in _STUDY_KEYS if key not in study]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; re-run drop-study")
    study["profile"] = load_profile(Path(folder) / "profile.json")
    return study


def _totals(profile: BlockProfile) -> tuple[int, int]:
    """Weight bytes and MACs per image of the whole network."""
    parts = [profile.stem, *profile.blocks, profile.head]
    return sum(p.param_bytes for p in parts), sum(p.macs for p in parts)


def _width_choice(study: dict) -> list[str]:
    """Cost of the model's width next to twice that and ResNet-50's 64, from the real layers."""
    kwargs = study["model"]
    width = kwargs["base_width"]
    lines = ["| base width | weights (MB) | MACs per image (M) |", "|---|---|---|"]
    for w in sorted({width, 2 * width, 64}):
        stem, blocks, head = profile_blocks(ResNet(**{**kwargs, "base_width": w}))
        parts = [stem, *blocks, head]
        weights, macs = sum(p.param_bytes for p in parts), sum(p.macs for p in parts)
        label = f"{w} (ResNet-50's)" if w == 64 else f"{w} (ours)" if w == width else str(w)
        lines.append(f"| {label} | {weights / 1e6:.2f} | {macs / 1e6:.1f} |")
    return lines


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _singles(study: dict) -> list[dict]:
    return [row for row in study["table2"] if " " not in str(row["dropped"])]


def _pairs(study: dict) -> list[dict]:
    return [row for row in study["table2"] if " " in str(row["dropped"])]


def _relative_threshold() -> float:
    return PAPER["table2_threshold"] / PAPER["clean_accuracy"]


def degradation_summary(study: dict) -> dict:
    """Clean accuracy and mean/min accuracy over single DC, single SC and DC pair drops."""
    dc = [row["dc_dropped_accuracy"] for row in study["table1"]]
    sc = [row["sc_dropped_accuracy"] for row in study["table1"]]
    pairs = [row["accuracy"] for row in _pairs(study)]
    clean = study["clean_accuracy"]
    return {
        "clean": clean,
        "dc_mean": mean(dc), "dc_min": min(dc),
        "sc_mean": mean(sc), "sc_min": min(sc),
        "pair_mean": mean(pairs), "pair_min": min(pairs),
        "dc_within_1pt": sum(clean - a <= 0.01 for a in dc),
        "pairs_within_1pt": sum(clean - a <= 0.01 for a in pairs),
        "pairs_above_threshold": sum(a > PAPER["table2_threshold"] for a in pairs),
        # The paper's 80% kept 80 / 94.73 of its clean accuracy; the same share of ours.
        "pairs_above_relative": sum(a > clean * _relative_threshold() for a in pairs),
        "n_blocks": len(dc), "n_pairs": len(pairs),
        "sc_worse_than_dc": sum(s < d for s, d in zip(sc, dc, strict=True)),
    }


def _model_line(study: dict) -> str:
    kwargs, history = study["model"], study["history"]
    config = study.get("train_config") or {}
    epochs = f"{len(history)} epochs" if history else "untrained"
    seconds = (f", {mean(h['seconds'] for h in history):.0f} s per epoch on "
               f"{study.get('torch_threads')} thread(s)" if history else "")
    weights, macs = _totals(study["profile"])
    return (f"base width {kwargs['base_width']} ({weights / 1e6:.2f} MB of weights, "
            f"{macs / 1e6:.1f} M MACs per image), stochastic depth "
            f"{kwargs['stochastic_depth']}, {epochs}{seconds}, seed {study.get('seed')}, "
            f"batch {config.get('batch_size', '-')}, peak lr {config.get('lr', '-')}")


def drop_study_markdown(study: dict) -> str:
    """One model's Table I (DC vs SC dropped per block) and Table II (all singles and pairs)."""
    lines = [
        f"# Drop study: {study['name']}",
        "",
        f"Model: {_model_line(study)}. Clean accuracy {_pct(study['clean_accuracy'])}% on "
        f"{study['samples']} CIFAR-10 test images.",
        "",
        "## Table I: one block dropped (accuracy %)",
        "",
        "| block | name | projection | DC dropped | SC dropped |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['block']} | {r['name']} | {'yes' if r['has_projection'] else ''} "
              f"| {_pct(r['dc_dropped_accuracy'])} | {_pct(r['sc_dropped_accuracy'])} |"
              for r in study["table1"]]
    lines += [
        "",
        "## Table II: blocks with DC dropped (accuracy %, savings of the whole network)",
        "",
        "| dropped | accuracy | memory saved (bytes) | memory saved % | MACs saved "
        "| MACs saved % |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['dropped']} | {_pct(r['accuracy'])} | {r['memory_saved_bytes']} "
              f"| {r['memory_saved_pct']:.1f} | {r['macs_saved']} | {r['macs_saved_pct']:.1f} |"
              for r in study["table2"]]
    return "\n".join(lines) + "\n"


def _findings(studies: dict[str, dict], summaries: dict[str, dict]) -> list[str]:
    """Sentences comparing each model with the paper's stated findings, from the data."""
    lines = []
    for name, s in summaries.items():
        table1 = studies[name]["table1"]
        by_accuracy = sorted(table1, key=lambda r: r["dc_dropped_accuracy"])
        worst, safest = by_accuracy[:3], by_accuracy[:-4:-1]
        projection_dc = [r["dc_dropped_accuracy"] for r in table1 if r["has_projection"]]
        identity_dc = [r["dc_dropped_accuracy"] for r in table1 if not r["has_projection"]]
        lines += [
            f"- **{name}**: dropping the shortcut (SC) costs more than dropping the branch "
            f"(DC) in {s['sc_worse_than_dc']} of {s['n_blocks']} blocks (mean "
            f"{_pct(s['sc_mean'])}% vs {_pct(s['dc_mean'])}%)"
            + (", as the paper found." if s["sc_worse_than_dc"] > s["n_blocks"] / 2
               else ", unlike the paper."),
            f"  {s['dc_within_1pt']} of {s['n_blocks']} single DC drops stay within 1 point "
            f"of the clean {_pct(s['clean'])}%; the most harmful are "
            + ", ".join(f"{r['name']} ({_pct(r['dc_dropped_accuracy'])}%)" for r in worst)
            + ", the safest "
            + ", ".join(f"{r['name']} ({_pct(r['dc_dropped_accuracy'])}%)" for r in safest)
            + f". Mean accuracy with DC dropped: projection (first-of-stage) blocks "
            f"{_pct(mean(projection_dc))}%, identity blocks {_pct(mean(identity_dc))}%.",
            f"  {s['pairs_above_threshold']} of {s['n_pairs']} pairs stay above the paper's "
            f"{_pct(PAPER['table2_threshold'])}% Table II threshold, "
            f"{s['pairs_above_relative']} above the same share of our clean accuracy "
            f"({_pct(_relative_threshold())}% of it, as 80% is of the paper's "
            f"{_pct(PAPER['clean_accuracy'])}%); {s['pairs_within_1pt']} stay within 1 point "
            "of clean.",
        ]
    return lines


def report_markdown(studies: dict[str, dict], figure: str | None = None) -> str:
    """Several models' drop studies side by side, with the paper's findings and a summary."""
    names = list(studies)
    summaries = {name: degradation_summary(study) for name, study in studies.items()}
    lines = [
        "# Adaptive ResNet: block-drop study (paper Tables I and II)",
        "",
        "Generated by `resilient-perception drop-report` from the `drop_study.json` files "
        "beside this page (see `scripts/reproduce_resnet.sh`). Accuracies are % on the "
        "CIFAR-10 test set.",
        "",
        "## Models",
        "",
        "| model | setup | clean accuracy |",
        "|---|---|---|",
        f"| paper | {PAPER['model']} | {_pct(PAPER['clean_accuracy'])} |",
    ]
    lines += [f"| {name} | {_model_line(studies[name])} | {_pct(s['clean'])} |"
              for name, s in summaries.items()]
    first = studies[names[0]]
    lines += [
        "",
        "## Choice of width",
        "",
        "The paper fine-tunes an ImageNet ResNet-50 at 224x224 on a GPU. We keep ResNet-50's "
        "16 bottleneck blocks (3-4-6-3, expansion 4) and train from scratch on 32x32 images "
        "with a 3x3 stem and no max pooling (stages at 32, 16, 8 and 4 pixels), on a CPU. "
        "Compute grows with the square of the width, so the base width is chosen for the "
        "training budget: a few minutes per epoch on one idle thread. On the 2-core "
        "machine these runs shared (two trainings niced beside other jobs)"
        + (f", an epoch including the test pass took "
           f"{mean(h['seconds'] for h in first['history']):.0f} s on average"
           if first["history"] else "") + ".",
        "",
        *_width_choice(first),
    ]
    lines += [
        "",
        "## How gracefully each model degrades",
        "",
        "| model | clean | mean 1 DC drop | worst 1 DC drop | mean 1 SC drop "
        "| mean DC pair | worst DC pair | pairs > 80% | pairs > "
        f"{_pct(_relative_threshold())}% of clean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {_pct(s['clean'])} | {_pct(s['dc_mean'])} | {_pct(s['dc_min'])} "
              f"| {_pct(s['sc_mean'])} | {_pct(s['pair_mean'])} | {_pct(s['pair_min'])} "
              f"| {s['pairs_above_threshold']} of {s['n_pairs']} "
              f"| {s['pairs_above_relative']} of {s['n_pairs']} |"
              for name, s in summaries.items()]
    if len(names) >= 2:
        base, other = summaries[names[0]], summaries[names[1]]
        lines += [
            "",
            f"Loss from clean accuracy, {names[0]} vs {names[1]}: one block DC-dropped "
            f"{_pct(base['clean'] - base['dc_mean'])} vs "
            f"{_pct(other['clean'] - other['dc_mean'])} points on average, a pair "
            f"{_pct(base['clean'] - base['pair_mean'])} vs "
            f"{_pct(other['clean'] - other['pair_mean'])} points.",
        ]
    lines += [
        "",
        "## Compared with the paper",
        "",
        "The paper's Table I/II values are images that are not in our copy of its text, and "
        "they are for an ImageNet ResNet-50 at 224x224, so the comparison is with what its "
        "text states: SC (shortcut) connections matter more than DC (residual branch) "
        "connections; at most two blocks can be dropped before accuracy becomes "
        "unacceptable; Table II keeps the drop sets with accuracy above 80%; the stem "
        "cannot be dropped.",
        "",
        *_findings(studies, summaries),
    ]
    if figure:
        lines += ["", f"![accuracy with one block's residual branch dropped]({figure})"]
    header = "| block | name | projection | " + " | ".join(
        f"{n} DC | {n} SC" for n in names) + " |"
    lines += [
        "",
        "## Table I: one block dropped",
        "",
        header,
        "|---|---|---|" + "---|---|" * len(names),
    ]
    for i, row in enumerate(studies[names[0]]["table1"]):
        cells = [f"{_pct(studies[n]['table1'][i]['dc_dropped_accuracy'])} | "
                 f"{_pct(studies[n]['table1'][i]['sc_dropped_accuracy'])}" for n in names]
        lines.append(f"| {row['block']} | {row['name']} | "
                     f"{'yes' if row['has_projection'] else ''} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Table II: single blocks with DC dropped",
        "",
        "Memory and MACs saved are the residual branch's (a projection block keeps its 1x1 "
        f"shortcut), as % of the whole network of {names[0]}.",
        "",
        "| dropped | name | memory saved % | MACs saved % | "
        + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for i, row in enumerate(_singles(studies[names[0]])):
        cells = [_pct(_singles(studies[n])[i]["accuracy"]) for n in names]
        lines.append(f"| {row['dropped']} | {row['names']} | {row['memory_saved_pct']:.1f} "
                     f"| {row['macs_saved_pct']:.1f} | " + " | ".join(cells) + " |")
    top = 10
    lines += [
        "",
        f"## Table II: the {top} best pairs with DC dropped, per model",
        "",
        "All pairs are in each model's `table2.csv`.",
    ]
    for name in names:
        best = sorted(_pairs(studies[name]), key=lambda r: -r["accuracy"])[:top]
        lines += [
            "",
            f"**{name}**",
            "",
            "| dropped | names | accuracy | memory saved % | MACs saved % |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {r['dropped']} | {r['names']} | {_pct(r['accuracy'])} "
                  f"| {r['memory_saved_pct']:.1f} | {r['macs_saved_pct']:.1f} |" for r in best]
    return "\n".join(lines) + "\n"


def plot_dc_accuracy(studies: dict[str, dict], path: Path) -> Path:
    """Bar chart of per-block accuracy with the residual branch dropped, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(studies)
    blocks = [row["block"] for row in studies[names[0]]["table1"]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, name in enumerate(names):
        study = studies[name]
        accuracy = [100 * row["dc_dropped_accuracy"] for row in study["table1"]]
        bars = ax.bar([b + (k - (len(names) - 1) / 2) * width for b in blocks], accuracy,
                      width, label=f"{name} (clean {_pct(study['clean_accuracy'])}%)")
        ax.axhline(100 * study["clean_accuracy"], color=bars.patches[0].get_facecolor(),
                   linestyle="--", linewidth=1)
    ax.set_xticks(blocks)
    ax.set_xticklabels([row["name"].replace("stage", "s").replace(".block", ".b")
                        for row in studies[names[0]]["table1"]], rotation=45, ha="right")
    ax.set_ylabel("test accuracy % (block's DC dropped)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", ncols=2)
    ax.set_title("CIFAR-10 accuracy with one residual branch dropped (dashed: clean)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
