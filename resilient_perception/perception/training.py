"""Joint training of the N device CNNs with fail-simulation (paper, Algorithm 2).

One loop, no framework. Per step (mini-batch)::

    loss = sum_i CE_i  +  lambda_kl * KL(p_j || p_hat_j)

* ``CE_i`` is device ``i``'s cross-entropy, averaged over the batch samples for which the
  device has a view (``available``) and is allowed to learn (``sample_mask``, for non-IID
  partitions ``X_i``); the per-device means are summed over devices (Algorithm 2, line 7).
* Fail-simulation: ``drop_k`` devices ``j`` are drawn at random per step (the same for the
  whole batch, as "each iteration" in the paper); the surrogate ``p_hat`` is built by
  :func:`.modifier.surrogate_logits` from the remaining live devices, and the KL term is
  averaged over the dropped devices and the samples where device ``j`` has a view and at
  least one peer is live. ``fail_simulation=False`` is the paper's baseline (CE only).
* **Target detached** (``detach_target=True``, default): ``p_j`` is the soft target of a
  distillation loss, so the KL gradient flows only into the *active* devices' features and
  heads (the paper: "Gradients from the D_KL term flow into the weights and features of the
  active devices"). Without the detach, the cheapest way to lower the KL is to flatten
  ``p_j`` towards the peers' average, which costs device ``j`` its own accuracy and
  removes the view diversity that fusion relies on.
* Optimiser: SGD, momentum 0.9 (paper), with a linear warm-up then cosine decay so a few
  epochs converge (the paper uses a constant 0.01 for 40 epochs).
* Deterministic given ``seed`` (``torch.manual_seed`` + ``numpy.random.Generator`` for the
  batch order and the dropped devices) and a fixed thread count.
* Resumable: after every epoch ``on_epoch_end`` receives a :class:`TrainState` (history,
  SGD momentum buffers, both random generators' states); ``train(..., resume=state)``
  continues from it exactly as if the run had not stopped.
* The dataset stays uint8 in memory; each batch is converted with
  :func:`.model.views_to_float`.
* Baselines of the paper's Figure 7 as options: ``feature_dropout`` (dropout-trained
  devices: units of each device's feature vector dropped before its classifier) and
  ``failout`` (ResiliNet-style failout: each device's whole output is dropped for a sample
  with that probability, so its CE term and its share of the fused output vanish; a sample
  always keeps at least one device). ``fedavg_every`` is the FedAvg baseline: the devices
  train on their own views (partitions) and every that many steps their models are
  replaced by the average (:meth:`.model.MultiDeviceCNN.average_devices`); the model left
  at the end is the final average.
* ``precision="bf16"`` runs the forward pass under bfloat16 autocast (convolutions in
  bf16, loss and optimiser state in fp32): ~1.6x faster on CPUs with AVX512-BF16, at an
  accuracy cost measured in ``docs/results/foundation/``.
* Training runs where the model's parameters are (the CPU, or a CUDA GPU: :mod:`..compute`);
  the dataset stays in host memory and each batch moves there as uint8. On a GPU a resumed
  run is not bit-identical to a straight one (its kernels' order of additions varies).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..compute import CPU, autocast, model_device
from .model import DeviceCNN, MultiDeviceCNN, views_to_float
from .modes import FUSED_LOSS_MODES, PRECISIONS
from .modifier import fuse, fuse_average, surrogate_logits

__all__ = [
    "FUSED_LOSS_MODES",
    "PRECISIONS",
    "SGDConfig",
    "TrainConfig",
    "TrainState",
    "joint_loss",
    "lr_factor",
    "measure_training_throughput",
    "momentum_buffers",
    "restore_momentum",
    "train",
    "train_epoch_loop",
]

SCHEDULES = ("cosine", "constant")


@dataclass
class SGDConfig:
    """The SGD settings every trainer shares: epochs, batches, the :func:`lr_factor` schedule.

    Both model families' trainers extend it (:class:`TrainConfig` here, the adaptive
    ResNet's ``ResNetTrainConfig``); JSON-safe via :meth:`asdict`.
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate (after warm-up)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine": linear warm-up then cosine to 0; "constant"
    warmup_frac: float = 0.05  # fraction of all steps used for the linear warm-up

    def asdict(self) -> dict:
        """Plain-dict copy (JSON-serialisable)."""
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(SGDConfig):
    """Hyper-parameters of :func:`train` (JSON-safe via :meth:`asdict`)."""

    lambda_kl: float = 1.0
    fail_simulation: bool = True
    drop_k: int = 1  # devices dropped per step, 1..N-1
    detach_target: bool = True  # KL target p_j is a constant (see module docstring)
    fused_weight: float = 1.0  # CE of the fused output; 0 = the paper's loss (see docstring)
    fused_mode: str = "avg"  # the pooling that fused output is scored in: avg, or geo
    seed: int = 0
    num_threads: int | None = None  # torch.set_num_threads; None leaves it unchanged
    precision: str = "fp32"  # "fp32", or "bf16": forward pass under bfloat16 autocast
    feature_dropout: float = 0.0  # dropout on the features before each head (a baseline)
    failout: float = 0.0  # probability a device's whole output is dropped per sample
    fedavg_every: int = 0  # FedAvg: average the devices' models every this many steps (0 = off)

    def loss_options(self) -> dict:
        """The keyword arguments of :func:`joint_loss` this configuration sets."""
        return {"lambda_kl": self.lambda_kl, "detach_target": self.detach_target,
                "fused_weight": self.fused_weight, "fused_mode": self.fused_mode}

    def validate(self, n_devices: int) -> None:
        """Raise ``ValueError`` for inconsistent settings."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.fused_mode not in FUSED_LOSS_MODES:
            raise ValueError(f"fused_mode must be one of {FUSED_LOSS_MODES}, "
                             f"got {self.fused_mode!r}")
        for name in ("feature_dropout", "failout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.fedavg_every < 0:
            raise ValueError(f"fedavg_every must be >= 0, got {self.fedavg_every}")
        if self.fail_simulation and not 1 <= self.drop_k <= n_devices - 1:
            raise ValueError(f"drop_k must be in 1..{n_devices - 1}, got {self.drop_k}")


@dataclass
class TrainState:
    """Where a :func:`train` run stands after an epoch: enough to continue it exactly."""

    history: list[dict]  # one dict per finished epoch
    momentum: dict[str, torch.Tensor]  # :func:`momentum_buffers` of the optimiser
    numpy_rng: dict  # ``np.random.Generator.bit_generator.state`` (batch order, drops)
    torch_rng: torch.Tensor  # ``torch.get_rng_state()`` (dropout masks)


def momentum_buffers(optimizer: torch.optim.SGD) -> dict[str, torch.Tensor]:
    """The SGD momentum buffers by parameter index (``momentum.<i>``), to checkpoint."""
    params = optimizer.param_groups[0]["params"]
    return {f"momentum.{i}": optimizer.state[p]["momentum_buffer"]
            for i, p in enumerate(params) if "momentum_buffer" in optimizer.state[p]}


def restore_momentum(optimizer: torch.optim.SGD, buffers: dict[str, torch.Tensor]) -> None:
    """Put :func:`momentum_buffers` back into a fresh optimiser over the same parameters."""
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        buffer = buffers.get(f"momentum.{i}")
        if buffer is not None:
            optimizer.state[p]["momentum_buffer"] = buffer.to(p.device, copy=True)


def lr_factor(cfg: SGDConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then cosine decay to 0.

    ``cfg.warmup_frac`` of the ``total_steps`` warm up linearly to the peak ``cfg.lr``;
    ``cfg.schedule == "constant"`` keeps the peak throughout.
    """
    warm = max(1, int(round(cfg.warmup_frac * total_steps))) if cfg.warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def joint_loss(
    logits: torch.Tensor,
    features: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    labels: torch.Tensor,
    ce_mask: torch.Tensor | None = None,
    available: torch.Tensor | None = None,
    dropped: Sequence[int] | None = None,
    lambda_kl: float = 1.0,
    detach_target: bool = True,
    fused_weight: float = 0.0,
    fused_mode: str = "avg",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 2's loss for one batch: ``(total, ce, kl)``.

    Args:
        logits: (B, N, K) device logits.
        features: (B, N, D) device features.
        weights: (N, K, D) classifier weights of the heads.
        biases: (N, K) classifier biases.
        labels: (B,) int64.
        ce_mask: (B, N) bool, which (sample, device) pairs contribute a CE term.
        available: (B, N) bool, which devices have a view (None = all).
        dropped: device indices whose failure is simulated (None/empty = no KL term).
        lambda_kl: weight of the KL term.
        detach_target: treat ``p_j`` as a constant target.
        fused_weight: weight of the cross-entropy of the fused output, counted in
            ``ce``: with all devices, plus (when ``dropped``) with the dropped devices
            replaced by their Modifier surrogate.
        fused_mode: how that output is pooled: ``"avg"`` (mean), or ``"geo"`` (renormalised
            geometric mean, :func:`.modifier.fuse_geometric`).

    """
    b, n, _ = logits.shape
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(2, labels.view(b, 1, 1).expand(b, n, 1)).squeeze(2)  # (B, N)
    if ce_mask is None:
        ce = nll.mean(dim=0).sum()
    else:
        m = ce_mask.to(nll.dtype)
        ce = ((nll * m).sum(dim=0) / m.sum(dim=0).clamp(min=1.0)).sum()
    kl = logits.new_zeros(())
    device = logits.device
    present = (torch.ones(b, n, dtype=torch.bool, device=device) if available is None
               else available)  # the devices the fused output averages
    if dropped is not None and len(dropped) > 0:
        drop = torch.as_tensor(list(dropped), dtype=torch.long, device=device)
        live = torch.ones(b, n, dtype=torch.bool, device=device)
        live[:, drop] = False
        if available is not None:
            live &= available
        log_phat = F.log_softmax(surrogate_logits(features, weights, biases, live), dim=-1)
        logp_j = logp[:, drop]  # (B, k, K)
        if detach_target:
            logp_j = logp_j.detach()
        kl_bj = (logp_j.exp() * (logp_j - log_phat[:, None, :])).sum(dim=-1)  # (B, k)
        valid = live.any(dim=1, keepdim=True).expand_as(kl_bj)
        if available is not None:
            valid = valid & available[:, drop]
        v = valid.to(kl_bj.dtype)
        kl = (kl_bj * v).sum() / v.sum().clamp(min=1.0)
        if fused_weight:
            probs = torch.where(live[..., None], logp.exp(), log_phat.exp()[:, None, :])
            ce = ce + fused_weight * _fused_nll(probs, present, labels, fused_mode)
    if fused_weight:
        ce = ce + fused_weight * _fused_nll(logp.exp(), present, labels, fused_mode)
    return ce + lambda_kl * kl, ce, kl


def _fused_nll(probs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
               mode: str) -> torch.Tensor:
    """Mean negative log-likelihood of the prediction fused by ``mode``."""
    fused = fuse(probs, mask, mode).clamp_min(1e-12)
    return -fused.log().gather(1, labels[:, None]).mean()


def _as_inputs(views, labels, available, sample_mask):
    views_t = torch.as_tensor(np.asarray(views)) if not torch.is_tensor(views) else views
    if views_t.dtype != torch.uint8 or views_t.ndim != 5:
        raise ValueError(f"views must be uint8 (M, N, C, h, w), got {views_t.dtype} "
                         f"{tuple(views_t.shape)}")
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    m, n = views_t.shape[:2]
    if labels_t.shape != (m,):
        raise ValueError(f"labels must have shape ({m},), got {tuple(labels_t.shape)}")

    def mask(a, name):
        if a is None:
            return None
        t = torch.as_tensor(np.asarray(a), dtype=torch.bool)
        if t.shape != (m, n):
            raise ValueError(f"{name} must have shape ({m}, {n}), got {tuple(t.shape)}")
        return t

    avail_t, smask_t = mask(available, "available"), mask(sample_mask, "sample_mask")
    ce_mask = avail_t
    if smask_t is not None:
        ce_mask = smask_t if ce_mask is None else ce_mask & smask_t
    return views_t, labels_t, avail_t, ce_mask


def _run_epoch(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    heads: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    views: torch.Tensor,
    labels: torch.Tensor,
    available: torch.Tensor | None,
    ce_mask: torch.Tensor | None,
    cfg: TrainConfig,
    rng: np.random.Generator,
    progress: bool,
    desc: str,
    max_batches: int | None = None,
    after_step: Callable[[int], None] | None = None,
    device: torch.device = CPU,
) -> dict:
    m, n = views.shape[:2]
    order = rng.permutation(m)
    n_batches = math.ceil(m / cfg.batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    tot = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0, "dev_correct": 0.0, "seen": 0}
    # A log file (CI, nohup) gets a line every 30 s instead of a redraw per batch.
    bar = tqdm(range(n_batches), desc=desc, disable=not progress, unit="batch", leave=False,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for bi in bar:
        idx = torch.from_numpy(order[bi * cfg.batch_size : (bi + 1) * cfg.batch_size])
        x = views_to_float(views[idx].to(device))
        y = labels[idx].to(device)
        av = available[idx].to(device) if available is not None else None
        cm = ce_mask[idx].to(device) if ce_mask is not None else None
        if cfg.failout:
            survives = torch.from_numpy(rng.random((len(y), n)) >= cfg.failout).to(device)
            survives[~survives.any(dim=1)] = True
            av = survives if av is None else av & survives
            cm = survives if cm is None else cm & survives
        dropped = None
        if cfg.fail_simulation:
            dropped = rng.choice(n, size=cfg.drop_k, replace=False).tolist()
        with autocast(device, cfg.precision):
            logits, feats = forward(x)
        logits, feats = logits.float(), feats.float()
        w, b = heads()
        if cfg.feature_dropout:
            feats = F.dropout(feats, cfg.feature_dropout)
            logits = torch.einsum("bnd,nkd->bnk", feats, w) + b
        loss, ce, kl = joint_loss(logits, feats, w, b, y, cm, av, dropped,
                                  **cfg.loss_options())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(scheduler.last_epoch)  # LambdaLR counts steps: the global step
        with torch.no_grad():
            bs = len(y)
            probs = logits.softmax(dim=-1)
            mask = av if av is not None else torch.ones(bs, n, dtype=torch.bool, device=device)
            tot["correct"] += int((fuse_average(probs, mask).argmax(1) == y).sum())
            tot["dev_correct"] += float((probs.argmax(2) == y[:, None]).float().mean(1).sum())
            tot["loss"] += float(loss) * bs
            tot["ce"] += float(ce) * bs
            tot["kl"] += float(kl) * bs
            tot["seen"] += bs
        if progress and (bi % 20 == 0 or bi == n_batches - 1):
            # No redraw of its own: the bar's interval decides, so a log gets a line per 30 s.
            bar.set_postfix(loss=f"{tot['loss'] / tot['seen']:.3f}",
                            acc=f"{tot['correct'] / tot['seen']:.4f}", refresh=False)
    bar.close()
    secs, cpu_secs = time.perf_counter() - t0, time.process_time() - cpu0
    seen = max(1, tot["seen"])
    return {
        "loss": tot["loss"] / seen,
        "ce": tot["ce"] / seen,
        "kl": tot["kl"] / seen,
        "train_acc": tot["correct"] / seen,  # average fusion of the available devices
        "device_acc": tot["dev_correct"] / seen,  # mean single-device accuracy
        "lr": optimizer.param_groups[0]["lr"],
        "images": tot["seen"],
        "seconds": secs,
        # CPU seconds of the whole process (all threads): unlike wall time, it does not grow
        # when other processes share the cores, so it is what budgets are planned with.
        "cpu_seconds": cpu_secs,
        "images_per_s": tot["seen"] / secs if secs > 0 else float("nan"),
    }


def _optimizer(params, cfg: TrainConfig, total_steps: int):
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total_steps))


def train(
    model: MultiDeviceCNN,
    views: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    config: TrainConfig | None = None,
    available: np.ndarray | torch.Tensor | None = None,
    sample_mask: np.ndarray | torch.Tensor | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> list[dict]:
    """Train ``model`` in place (Algorithm 2) and return the per-epoch history.

    Training runs on the device of ``model``'s parameters; the model stays there.

    Args:
        model: the N-device model (its current weights are the initialisation).
        views: uint8 (M, N, C, h, w).
        labels: int (M,).
        config: hyper-parameters (default :class:`TrainConfig`).
        available: (M, N) bool, False where a camera has no view for a frame: that device
            gets no CE term and is never live for the surrogate.
        sample_mask: (M, N) bool per-device CE mask (non-IID partitions).
        progress: show a tqdm bar per epoch.
        on_epoch_end: ``callback(state)`` after each epoch, e.g. to checkpoint it.
        resume: the state after an earlier call's last finished epoch (with the model's
            weights from then and the same config): training continues from there.

    Returns:
        One dict per epoch (with ``resume``, the earlier epochs' too): ``epoch, loss, ce,
        kl, train_acc, device_acc, lr, images, seconds, cpu_seconds, images_per_s``. The
        model is left in eval mode.

    """
    cfg = config or TrainConfig()
    views_t, labels_t, avail_t, ce_mask = _as_inputs(views, labels, available, sample_mask)
    if views_t.shape[1] != model.n_devices:
        raise ValueError(f"views have {views_t.shape[1]} devices, model {model.n_devices}")
    cfg.validate(model.n_devices)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(labels_t) / cfg.batch_size)
    steps = cfg.epochs * steps_per_epoch
    opt, sched = _optimizer(model.parameters(), cfg, steps)
    history: list[dict] = []
    if resume is not None:
        history = list(resume.history)
        restore_momentum(opt, resume.momentum)
        rng.bit_generator.state = resume.numpy_rng
        torch.set_rng_state(resume.torch_rng)
        # The schedule's step count and learning rate as its last step left them.
        sched.last_epoch = len(history) * steps_per_epoch
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, steps)(sched.last_epoch)
    model.train()

    def federated_average(step: int) -> None:
        if step % cfg.fedavg_every == 0 or step == steps:
            model.average_devices()

    for epoch in range(len(history), cfg.epochs):
        stats = _run_epoch(
            model, model.classifier_heads, opt, sched, views_t, labels_t, avail_t, ce_mask,
            cfg, rng, progress, desc=f"epoch {epoch + 1}/{cfg.epochs}",
            after_step=federated_average if cfg.fedavg_every else None,
            device=model_device(model),
        )
        history.append({"epoch": epoch + 1, **stats})
        if on_epoch_end is not None:
            on_epoch_end(TrainState(list(history), momentum_buffers(opt),
                                    rng.bit_generator.state, torch.get_rng_state()))
    model.eval()
    return history


def train_epoch_loop(
    devices: Sequence[DeviceCNN],
    views: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    config: TrainConfig | None = None,
    available: np.ndarray | torch.Tensor | None = None,
    sample_mask: np.ndarray | torch.Tensor | None = None,
    progress: bool = True,
    max_batches: int | None = None,
) -> dict:
    """Naive reference: ONE epoch with a Python loop over N separate :class:`DeviceCNN`.

    Same loss, schedule, batch order and dropped devices as :func:`train`; it exists only
    to measure the speed-up of the grouped model. ``max_batches`` runs a timed fraction.
    """
    cfg = config or TrainConfig()
    views_t, labels_t, avail_t, ce_mask = _as_inputs(views, labels, available, sample_mask)
    cfg.validate(len(devices))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = [p for d in devices for p in d.parameters()]
    opt, sched = _optimizer(params, cfg, cfg.epochs * math.ceil(len(labels_t) / cfg.batch_size))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [d(x[:, i]) for i, d in enumerate(devices)]
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)

    def heads() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([d.classifier.weight for d in devices]),
                torch.stack([d.classifier.bias for d in devices]))

    for d in devices:
        d.train()
    return _run_epoch(forward, heads, opt, sched, views_t, labels_t, avail_t, ce_mask, cfg,
                      rng, progress, desc="naive loop", max_batches=max_batches)


def measure_training_throughput(
    views: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig | None = None,
    naive_batches: int | None = None,
    progress: bool = False,
) -> dict:
    """Time one training epoch vectorised and naive (loop over N :class:`DeviceCNN`).

    ``naive_batches`` limits the naive run to a timed fraction, extrapolated to the epoch.
    Returns seconds per epoch, images/s and the speed-up (both from fresh models).
    """
    cfg = dataclasses.replace(config or TrainConfig(), epochs=1)
    _, n, c = views.shape[:3]
    k = int(np.max(labels)) + 1
    torch.manual_seed(cfg.seed)
    model = MultiDeviceCNN(n, c, k)
    vec = train(model, views, labels, cfg, progress=progress)[0]
    devices: list[nn.Module] = [DeviceCNN(c, k) for _ in range(n)]
    naive = train_epoch_loop(devices, views, labels, cfg, progress=progress,
                             max_batches=naive_batches)
    naive_epoch = naive["seconds"] * len(labels) / naive["images"]
    return {
        "images": len(labels),
        "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
        "vectorised_s_per_epoch": vec["seconds"],
        "vectorised_images_per_s": vec["images_per_s"],
        "vectorised_cpu_s_per_epoch": vec["cpu_seconds"],
        "naive_s_per_epoch": naive_epoch,
        "naive_images_timed": naive["images"],
        "naive_images_per_s": naive["images_per_s"],
        "speedup": naive_epoch / vec["seconds"],
    }
