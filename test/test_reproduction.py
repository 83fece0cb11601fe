"""The paper reproduction: statistics on known numbers, baselines, and the quick profile."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from resilient_perception.cli import main
from resilient_perception.paper import reproduction
from resilient_perception.paper.reproduction import (
    METHODS,
    Strategy,
    claim_run,
    error_rate_reduction,
    full_protocol,
    mean_ci,
    paired_t_test,
    pending_runs,
    quick_protocol,
    recovery_ratio,
    run_dir,
    run_one,
    run_protocol,
    strategy_summary,
)
from resilient_perception.perception import experiment
from resilient_perception.perception.checkpoint import load_checkpoint
from resilient_perception.perception.evaluation import (
    device_outputs,
    evaluate_failures,
    evaluate_message_loss,
)
from resilient_perception.perception.experiment import TRAINING_STATE, load_device_views
from resilient_perception.perception.learned_modifier import LEARNED_VARIANTS
from resilient_perception.perception.model import MultiDeviceCNN
from resilient_perception.perception.modifier import fuse_vote, surrogate_logits
from resilient_perception.perception.training import TrainConfig, train


def test_mean_ci_is_the_t_interval():
    mean, half = mean_ci([1, 2, 3, 4, 5])
    # by hand: sem = sqrt(2.5 / 5) = 0.70711, t(0.975, 4) = 2.77645
    assert mean == 3.0 and half == pytest.approx(2.77645 * 0.70711, rel=1e-4)
    x = [0.912, 0.934, 0.921, 0.940, 0.915, 0.929]
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean_ci(x)[1] == pytest.approx((high - low) / 2)
    assert mean_ci([0.9])[0] == 0.9 and math.isnan(mean_ci([0.9])[1])


def test_paired_t_test_known_numbers():
    a, b = [1.0, 2.0, 3.0, 4.0], [1.1, 2.3, 3.2, 4.6]
    t, p = paired_t_test(a, b)
    # by hand: differences -0.1 -0.3 -0.2 -0.6, mean -0.3, sd 0.21602, t = -0.3 / (sd / 2)
    assert t == pytest.approx(-2.7775, rel=1e-3)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue) and 0.05 < p < 0.1
    assert all(math.isnan(v) for v in paired_t_test([1, 2], [0, 1]))  # constant difference
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1, 2, 3], [1, 2])


@pytest.mark.parametrize(("base", "new", "printed"), [
    (0.8111, 0.8260, 0.079), (0.9337, 0.9428, 0.137), (0.7057, 0.7151, 0.032),
])
def test_error_rate_reduction_reproduces_table6(base, new, printed):
    assert error_rate_reduction(base, new) == pytest.approx(printed, abs=0.001)


def test_recovery_ratio():
    # the paper's MNIST avg: 96.25 -> 93.37 without, 94.28 with: about a third recovered
    assert recovery_ratio(0.9625, 0.9337, 0.9428) == pytest.approx(0.316, abs=0.001)
    assert math.isnan(recovery_ratio(0.9, 0.9, 0.95))


def _rows(n_devices=3):
    """Synthetic evaluation rows: accuracy 1 - 0.1 * (failed devices) - 0.01 * first failed."""
    from resilient_perception.perception.evaluation import failure_subsets

    rows = []
    for failed in failure_subsets(n_devices):
        for modifier in (False, True):
            acc = 1 - 0.1 * len(failed) - 0.01 * (failed[0] if failed else 0) + 0.05 * modifier
            rows.append({"failed": failed, "n_failed": len(failed), "mode": "avg",
                         "modifier": modifier, "accuracy": acc, "balanced_accuracy": acc})
    return {"rows": rows, "rows_confidence": []}


def test_standby_takes_over_the_first_failed_device():
    plain = strategy_summary(_rows(), Strategy("", "m", "avg", False))
    standby = strategy_summary(_rows(), Strategy("", "m", "avg", False, standby=1))
    assert standby["single_failure_per_device"] == [1.0, 1.0, 1.0]  # = no failure
    assert plain["single_failure_per_device"] == pytest.approx([0.9, 0.89, 0.88])
    # two failed: {0,1} -> {1}, {0,2} -> {2}, {1,2} -> {2}
    assert standby["by_n_failed"][2] == pytest.approx(np.mean([0.89, 0.88, 0.88]))
    assert strategy_summary(_rows(), Strategy("", "m", "avg", True))["no_failure"] == 1.05


def test_fuse_vote_majority_then_probability():
    probs = torch.tensor([[[0.1, 0.2, 0.7], [0.2, 0.1, 0.7], [0.0, 0.9, 0.1]],  # 2 votes for 2
                          [[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]]])  # tie 0 vs 1
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert fuse_vote(probs, mask).argmax(dim=1).tolist() == [2, 1]
    mask[0, 0] = False  # now 1 vote each for classes 2 and 1; class 1 is more probable
    assert fuse_vote(probs, mask).argmax(dim=1).tolist() == [1, 1]


def test_confidence_weighted_surrogate():
    torch.manual_seed(0)
    features, weights, biases = torch.randn(4, 3, 5), torch.randn(3, 2, 5), torch.randn(3, 2)
    live = torch.tensor([[True, True, False]] * 4)
    equal = surrogate_logits(features, weights, biases, live)
    same = surrogate_logits(features, weights, biases, live, torch.full((4, 3), 0.3))
    assert torch.allclose(equal, same, atol=1e-6)
    # a peer with (almost) no confidence drops out: the surrogate is device 0's own head
    skewed = surrogate_logits(features, weights, biases, live, torch.tensor([[1.0, 1e-9, 5.0]] * 4))
    assert torch.allclose(skewed, features[:, 0] @ weights[0].T + biases[0], atol=1e-5)


def test_baseline_training_options(mnist_views):
    views, labels = mnist_views[0][:64], mnist_views[1][:64]

    def trained(**options):
        torch.manual_seed(0)
        model = MultiDeviceCNN(6, 1, 10)
        config = TrainConfig(epochs=1, batch_size=64, num_threads=1, **options)
        return model, train(model, views, labels, config, progress=False)[0]

    plain, _ = trained(fail_simulation=False)
    for options in METHODS["dropout"].options, METHODS["failout"].options:
        model, history = trained(**options)
        assert np.isfinite(history["loss"]) and history["kl"] == 0.0
        assert not torch.equal(model.head_weight, plain.head_weight), options
    with pytest.raises(ValueError, match="failout"):
        trained(failout=1.0)
    with pytest.raises(ValueError, match="feature_dropout"):
        trained(feature_dropout=-0.1)


def test_fedavg_averages_the_devices(mnist_views):
    torch.manual_seed(0)
    model = MultiDeviceCNN(6, 1, 10)
    before = model.head_weight.detach().clone()
    model.average_devices()
    assert torch.allclose(model.head_weight[3], before.mean(dim=0), atol=1e-6)
    conv = model.trunk.blocks[2].conv1.weight  # device i owns rows 16 i .. 16 i + 15
    assert torch.equal(conv[:16], conv[80:])
    views, labels = mnist_views[0][:192], mnist_views[1][:192]
    config = TrainConfig(epochs=1, batch_size=64, num_threads=1, **METHODS["fedavg"].options)
    train(model, views, labels, config, progress=False)  # 3 steps: averaged at the last one
    assert all(torch.equal(model.head_bias[0], b) for b in model.head_bias)
    assert not torch.allclose(model.head_weight[0], before.mean(dim=0))  # it did learn


def test_message_loss(mnist_views, briefly_trained_model):
    probs, features = device_outputs(briefly_trained_model, mnist_views[0][:300])
    heads = [t.detach() for t in briefly_trained_model.classifier_heads()]
    labels = mnist_views[1][:300]
    rows = evaluate_message_loss(probs, features, *heads, labels, (0.0, 1.0), seed=3)
    by_key = {(r["loss_rate"], r["mode"], r["modifier"]): r["accuracy"] for r in rows}
    full = evaluate_failures(probs, features, *heads, labels, subsets=[()])
    for r in full:  # no loss = no failure
        assert by_key[0.0, r["mode"], r["modifier"]] == pytest.approx(r["accuracy"])
    assert all(by_key[1.0, mode, mod] == 0.0 for mode in ("avg", "max") for mod in (0, 1))
    again = evaluate_message_loss(probs, features, *heads, labels, (0.3,), seed=3)
    assert again == evaluate_message_loss(probs, features, *heads, labels, (0.3,), seed=3)


def test_reproduce_quick_profile(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "report"
    args = ["reproduce", "--quick", "--datasets", "mnist", "--runs", str(runs),
            "--out", str(out)]
    assert main(args) == 0
    for name in ("tables.md", "seeds.csv", "summary.json", "fig4_failed_devices.png",
                 "fig5_pooling.png", "fig6_per_device.png", "fig7_baselines.png",
                 "training_curves.png", "training_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    tables = (out / "tables.md").read_text()
    assert "Table 6" in tables and "93.37" in tables and "redundant standby" in tables
    assert "| mnist | mean single failure, Modifier | 94.28 |" in tables  # the summary
    assert "confidence-weighted" in tables and "Message loss" in tables
    assert "gaussian:0.2" in tables and "salt_pepper:0.2" in tables
    with (out / "seeds.csv").open() as fh:
        seeds = list(csv.DictReader(fh))
    on_mnist = [m for m in METHODS if METHODS[m].runs_on("mnist")]
    assert {r["method"] for r in seeds} == set(on_mnist)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_done"] == summary["runs"] == len(on_mnist)

    # Rerun: every run is cached, nothing is trained or evaluated again.
    results = {m: run_dir(runs, "mnist", m, 0) / "evaluation.json" for m in on_mnist}
    stamps = {m: p.stat().st_mtime_ns for m, p in results.items()}
    capsys.readouterr()
    assert main(args) == 0
    assert "0 to do" in capsys.readouterr().out
    assert {m: p.stat().st_mtime_ns for m, p in results.items()} == stamps

    # A run interrupted after training is only evaluated; one without a model is retrained.
    model = run_dir(runs, "mnist", "ours", 0) / "model.safetensors"
    model_stamp = model.stat().st_mtime_ns
    results["ours"].unlink()
    (run_dir(runs, "mnist", "paper", 0) / "model.safetensors").unlink()
    results["paper"].unlink()
    assert main(args) == 0
    assert "2 to do" in capsys.readouterr().out
    assert results["ours"].exists() and model.stat().st_mtime_ns == model_stamp
    assert results["paper"].exists()
    unchanged = [m for m in on_mnist if m not in ("ours", "paper")]
    assert all(results[m].stat().st_mtime_ns == stamps[m] for m in unchanged)

    # Another epoch count is another protocol: its runs are stale, reported as to do.
    assert main([*args, "--epochs", "mnist=2", "--report-only"]) == 0
    assert f"{len(on_mnist)} to do" in capsys.readouterr().out


def test_reproduce_rejects_bad_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--datasets", "mnist,imagenet"])
    assert exc.value.code == 2 and "imagenet" in capsys.readouterr().err
    assert main(["reproduce", "--quick", "--datasets", "mnist", "--epochs", "cifar10=2",
                 "--report-only"]) == 2
    assert "not in --datasets" in capsys.readouterr().err


def test_new_evaluation_version_reevaluates_without_retraining(tmp_path, monkeypatch):
    protocol = quick_protocol(methods=("ours",))
    plan = protocol.datasets["mnist"]
    train = load_device_views("mnist", "train", limit=plan.train_limit)
    test = load_device_views("mnist", "test", limit=plan.test_limit)
    new_version = reproduction.EVALUATION_VERSION
    # trained and evaluated by the previous evaluation version (as a running job does)
    monkeypatch.setattr(reproduction, "EVALUATION_VERSION", new_version - 1)
    run_one(protocol, tmp_path, "mnist", "ours", 0, train, test)
    folder = run_dir(tmp_path, "mnist", "ours", 0)
    model = folder / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert load_checkpoint(model)[1]["run_key"]["evaluation_version"] == new_version - 1

    monkeypatch.setattr(reproduction, "EVALUATION_VERSION", new_version)
    assert pending_runs(protocol, tmp_path) == [("mnist", "ours", 0)]  # its results are stale
    run_one(protocol, tmp_path, "mnist", "ours", 0, train, test)
    assert model.stat().st_mtime_ns == stamp  # the model was loaded, not trained again
    result = json.loads((folder / "evaluation.json").read_text())
    assert result["key"]["evaluation_version"] == new_version
    assert set(result["rows_learned"]) == set(LEARNED_VARIANTS)
    assert pending_runs(protocol, tmp_path) == []
    # a change of training (here the seed's config) is still a new model
    other = dataclasses.replace(protocol, precision="bf16")
    run_one(other, tmp_path, "mnist", "ours", 0, train, test)
    assert model.stat().st_mtime_ns != stamp


def test_blank_views_abstain_on_the_mvmc_runs(tmp_path, capsys):
    from resilient_perception.paper.blank_view_study import score_blank_abstention
    from resilient_perception.perception.checkpoint import load_checkpoint
    from resilient_perception.perception.evaluation import (
        blank_views,
        device_outputs,
        evaluate_failures,
    )
    from resilient_perception.perception.experiment import load_device_views

    runs, out = tmp_path / "runs", tmp_path / "blank-views"
    assert main(["reproduce", "--quick", "--datasets", "mvmc", "--methods", "paper,ours",
                 "--runs", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert main(["blank-views", "--seeds", "1", "--runs", str(runs), "--out", str(out)]) == 0
    tables = (out / "tables.md").read_text()
    assert "| `ours` | avg | yes | single failure mean |" in tables
    # Camera 2 alone sees 4 test frames, none of them a car.
    assert "| 2 | 4 | 4 | 97.35 |" in tables
    with (out / "seeds.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 8  # 2 runs x avg/max x Modifier x policy

    # Abstaining devices are left out unless nobody would be left: all abstaining = none.
    model, _ = load_checkpoint(run_dir(runs, "mvmc", "ours", 0) / "model.safetensors")
    test = load_device_views("mvmc", "test")
    probs, features = device_outputs(model, test.views)
    heads = [t.detach() for t in model.classifier_heads()]
    blank = blank_views(test.views)
    assert 0.3 < blank.mean() < 0.5 and not blank.all(axis=1).any()

    def scored(abstain, subsets, frames=slice(None)):
        return [r["accuracy"] for r in evaluate_failures(
            probs[frames], features[frames], *heads, test.labels[frames],
            test.available[frames], ("avg",), subsets=subsets,
            abstain=None if abstain is None else abstain[frames])]

    assert scored(np.ones_like(blank), [(), (1,)]) == scored(None, [(), (1,)])
    # An abstaining device counts as failed: all but device 0 abstaining = them failed
    # (on the frames that have a view 0; the others fall back to every device).
    all_but_first = np.ones_like(blank)
    all_but_first[:, 0] = False
    with_view = np.flatnonzero(test.available[:, 0])
    assert len(with_view) > 0.95 * len(test.labels)
    assert scored(all_but_first, [()], with_view) == scored(None, [(1, 2, 3, 4, 5)], with_view)
    rows = score_blank_abstention(model, test)
    assert {(r["fusion"], r["blank_views"]) for r in rows} == {
        (f, p) for f in ("avg", "max") for p in ("vote", "abstain")}


def test_parallel_processes_share_the_runs_out(tmp_path):
    """A run another process holds is skipped, and done by whoever claims it later."""
    protocol = quick_protocol(methods=("paper", "ours"))
    held = run_dir(tmp_path, "mnist", "paper", 0)
    with claim_run(held) as claimed:  # as another lane running this run would
        assert claimed
        with claim_run(held) as again:
            assert not again
        assert run_protocol(protocol, tmp_path, progress=False) == [("mnist", "ours", 0)]
    assert pending_runs(protocol, tmp_path) == [("mnist", "paper", 0)]
    assert run_protocol(protocol, tmp_path, progress=False) == [("mnist", "paper", 0)]
    assert pending_runs(protocol, tmp_path) == []


def test_extension_methods_run_where_and_as_declared():
    protocol = full_protocol(seeds=tuple(range(10)), baseline_seeds=3)
    runs = protocol.runs()
    assert [r for r in runs if r[1] == "paper-10x"] == [("mnist", "paper-10x", 0),
                                                        ("cifar10", "paper-10x", 0)]
    assert [r for r in runs if r[1] == "ours-overlap50"] == [
        ("mnist", "ours-overlap50", s) for s in range(3)]
    assert len([r for r in runs if r[1] == "paper"]) == 30  # 10 seeds x 3 datasets
    assert len(runs) == 3 * (3 * 10 + 4 * 3) + 2 + 3
    assert protocol.train_config("cifar10", "paper-10x", 0).epochs == 40
    assert protocol.train_config("mnist", "ours-overlap50", 0).epochs == 12
    assert protocol.view_spec("mnist", "ours-overlap50").overlap == 0.5
    assert protocol.run_key("mnist", "ours-overlap50", 0)["view_spec"]["overlap"] == 0.5
    # the other methods' keys are unchanged, so their cached runs stay valid
    assert "view_spec" not in protocol.run_key("mnist", "ours", 0)


class _Killed(Exception):
    """Raised after the first epoch's state is saved: the run's process 'dies' there."""


def test_run_killed_mid_training_continues_from_its_last_epoch(tmp_path, monkeypatch):
    quick = quick_protocol(methods=("ours",))
    plan = dataclasses.replace(quick.datasets["mnist"], epochs=2)
    protocol = dataclasses.replace(quick, datasets={"mnist": plan})
    train_data = load_device_views("mnist", "train", limit=plan.train_limit)
    test_data = load_device_views("mnist", "test", limit=plan.test_limit)
    run_one(protocol, tmp_path / "straight", "mnist", "ours", 0, train_data, test_data)

    save = experiment.save_training_state

    def save_then_die(path, model, state, metadata):
        save(path, model, state, metadata)
        raise _Killed

    monkeypatch.setattr(experiment, "save_training_state", save_then_die)
    with pytest.raises(_Killed):
        run_one(protocol, tmp_path / "resumed", "mnist", "ours", 0, train_data, test_data)
    monkeypatch.undo()
    folder = run_dir(tmp_path / "resumed", "mnist", "ours", 0)
    assert (folder / TRAINING_STATE).exists() and not (folder / "model.safetensors").exists()
    result = run_one(protocol, tmp_path / "resumed", "mnist", "ours", 0, train_data, test_data)

    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert not (folder / TRAINING_STATE).exists()
    straight = load_checkpoint(run_dir(tmp_path / "straight", "mnist", "ours", 0)
                               / "model.safetensors")[0]
    resumed = load_checkpoint(folder / "model.safetensors")[0]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k

    # A state saved under other settings (here 1 epoch, not 2) is dropped, not continued.
    with pytest.raises(_Killed):
        monkeypatch.setattr(experiment, "save_training_state", save_then_die)
        run_one(protocol, tmp_path / "stale", "mnist", "ours", 0, train_data, test_data)
    monkeypatch.undo()
    result = run_one(quick, tmp_path / "stale", "mnist", "ours", 0, train_data, test_data)
    assert [h["epoch"] for h in result["history"]] == [1]
    assert result["history"][0]["lr"] == 0.0  # a 1-epoch schedule's end, not mid-way of 2
