"""The reproduction's training methods and per-dataset plans, as data without torch.

:mod:`.reproduction` runs them; they live here so that the command line's parser can list
the methods and the default epochs without importing the trainer (torch, scipy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FULL_PLANS", "METHODS", "DatasetPlan", "Method"]


@dataclass(frozen=True)
class Method:
    """A named way of training the devices: :class:`TrainConfig` overrides and its runs."""

    name: str
    label: str
    options: dict = field(default_factory=dict)
    datasets: tuple[str, ...] = ()  # the datasets it runs on (empty: every one)
    epoch_factor: int = 1  # trained for this many times its dataset's epochs
    overlap: float = 0.0  # grid views enlarged by this fraction of a cell (grid datasets)
    seeds: int | None = None  # runs on the protocol's first this many seeds only

    def runs_on(self, dataset: str) -> bool:
        """Whether the method is part of the protocol for ``dataset``."""
        return not self.datasets or dataset in self.datasets


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("paper", "fail-sim, the paper's loss (Algorithm 2)",
           {"fail_simulation": True, "fused_weight": 0.0}),
    Method("ours", "fail-sim + fused-output loss (ours)",
           {"fail_simulation": True, "fused_weight": 1.0}),
    Method("no-fail-sim", "no fail-simulation (the paper's baseline system)",
           {"fail_simulation": False, "fused_weight": 0.0}),
    Method("dropout", "dropout-trained devices (p = 0.3)",
           {"fail_simulation": False, "fused_weight": 0.0, "feature_dropout": 0.3}),
    Method("failout", "ResiliNet-style failout (p = 0.1)",
           {"fail_simulation": False, "fused_weight": 1.0, "failout": 0.1}),
    Method("ours-k2", "ours with k = 2 simulated failures",
           {"fail_simulation": True, "fused_weight": 1.0, "drop_k": 2}),
    Method("fedavg", "FedAvg across the devices' views (models averaged every 50 steps)",
           {"fail_simulation": False, "fused_weight": 0.0, "fedavg_every": 50}),
    # Beyond the protocol's budget: where its epochs stop short, and what wider views buy.
    Method("paper-10x", "the paper's method trained 10x as long (40 epochs, the paper's "
           "count): how far the protocol's 4 epochs are from converged",
           {"fail_simulation": True, "fused_weight": 0.0},
           datasets=("mnist", "cifar10"), epoch_factor=10, seeds=1),
    Method("ours-overlap50", "ours with the fused loss weighted 4x, on grid views that "
           "overlap by 50% of a cell, 3x the epochs",
           {"fail_simulation": True, "fused_weight": 4.0},
           datasets=("mnist",), epoch_factor=3, overlap=0.5, seeds=3),
)}


@dataclass(frozen=True)
class DatasetPlan:
    """Epochs, batch size and sample limits of one dataset (limit None = the whole split)."""

    epochs: int
    batch_size: int = 128
    train_limit: int | None = None
    test_limit: int | None = None


# The full protocol's training per dataset, chosen so it fits ~10 CPU hours on 2 cores (see
# scripts/reproduce_paper.sh for the measured epoch times behind them). MVMC has only 1,115
# training frames: batch 32 gives it 35 steps per epoch instead of 9.
FULL_PLANS = {"mnist": DatasetPlan(4), "cifar10": DatasetPlan(4),
              "mvmc": DatasetPlan(12, batch_size=32)}
