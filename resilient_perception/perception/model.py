"""Device CNNs of the Modifier paper (Table 2), single-device and N-device vectorised.

Architecture (one device)
-------------------------
Five residual blocks, each ``conv3x3+BN+ReLU -> conv3x3+BN -> (+ shortcut) -> ReLU``.
Channels: block 1 ``in -> 8``, block 2 ``8 -> 16``, blocks 3-5 ``16 -> 16``; then adaptive
average pooling to 1x1 (feature vector, ``D = 16``) and one linear classifier ``D -> K``.
Convolutions keep their biases (Table 2 counts them) although a BN follows each.

Shortcut: identity when the channel count is unchanged; when it grows (``1 -> 8``,
``8 -> 16``) the input is zero-padded along channels (the "option A" shortcut of the
original ResNet paper). It has no parameters, so the count stays close to Table 2.

Parameter count (1 input channel, 10 classes): **18,530**

=================  =====================================================  ======
block 1 (1->8)     (1*8*9+8) + 2*8 + (8*8*9+8) + 2*8  = 80+16+584+16         696
block 2 (8->16)    (8*16*9+16) + 2*16 + (16*16*9+16) + 2*16 = 1168+32+2320+32  3,552
blocks 3-5 (16->16) 3 * ((16*16*9+16) + 2*16) * 2 = 3 * 4,704             14,112
classifier         16*10 + 10                                                170
total                                                                     18,530
=================  =====================================================  ======

The paper's 15,074 is ``696 + 4*3,552 + 170``: Table 2 says "Residual Blocks 3 to 5: repeat
Block 2", i.e. it counts blocks 3-5 with Block 2's ``8 -> 16`` first convolution
(1,168 parameters) although their input has 16 channels, which needs a ``16 -> 16``
convolution (2,320 parameters). Per block the difference is ``2,320 - 1,168 = 1,152``;
``3 * 1,152 = 3,456 = 18,530 - 15,074``. A consistent implementation therefore has 18,530.

Two modules are provided:

* :class:`DeviceCNN` -- one device; what a camera node runs and what ONNX export uses.
* :class:`MultiDeviceCNN` -- all N devices in one module and one forward/backward: the
  device axis is folded into channels, every convolution's and BatchNorm's tensors hold
  the N devices' tensors (the layout of a grouped convolution with ``groups=N``), and the
  forward runs each device's slices on that device's input; the N classifiers are one
  einsum. ``MultiDeviceCNN.device(i)`` returns an exact :class:`DeviceCNN` copy of device
  ``i``.

Both share :class:`_ResidualStack`, so the parameter layout is identical up to the device
axis: every convolution/BN tensor of the grouped model is the N per-device tensors
concatenated along dim 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .runtime import views_to_float32

__all__ = [
    "DeviceCNN",
    "MultiDeviceCNN",
    "count_parameters",
    "views_to_float",
]


def views_to_float(views: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert uint8 views (any shape) to float32 in ``[0, 1]`` as a tensor.

    Float inputs are returned as float32 unchanged (assumed already scaled). numpy input is
    scaled by :func:`.runtime.views_to_float32`, the inference backends' scaling, so
    training and the torch-free runtime see the same numbers.
    """
    if isinstance(views, np.ndarray):  # numpy's scaling is the runtime's: one implementation
        return torch.from_numpy(views_to_float32(views))
    if views.dtype == torch.uint8:
        return views.to(torch.float32).div_(255.0)
    if views.is_floating_point():
        return views.to(torch.float32)
    raise TypeError(f"views must be uint8 or floating point, got {views.dtype}")


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Count the (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _block_channels(in_channels: int, widths: Sequence[int], n_blocks: int) -> list[tuple]:
    """(c_in, c_out) per block: block k outputs ``widths[min(k, len(widths)-1)]``."""
    if n_blocks < 1 or not widths:
        raise ValueError("need n_blocks >= 1 and at least one width")
    chans = []
    c_in = in_channels
    for k in range(n_blocks):
        c_out = int(widths[min(k, len(widths) - 1)])
        if c_out < c_in:
            raise ValueError(
                f"block {k}: {c_in} -> {c_out} channels; the parameter-free shortcut "
                "can only keep or grow the channel count"
            )
        chans.append((c_in, c_out))
        c_in = c_out
    return chans


class _ResidualBlock(nn.Module):
    """Residual block for ``groups`` independent devices folded into channels.

    The parameters are grouped (device ``i`` owns rows ``i*c_out:(i+1)*c_out`` of each
    tensor); :meth:`forward` runs one device's part on that device's own input.
    """

    def __init__(self, c_in: int, c_out: int, groups: int = 1) -> None:
        super().__init__()
        self.c_in, self.c_out, self.groups = c_in, c_out, groups
        g = groups
        self.conv1 = nn.Conv2d(g * c_in, g * c_out, 3, padding=1, groups=g)
        self.bn1 = nn.BatchNorm2d(g * c_out)
        self.conv2 = nn.Conv2d(g * c_out, g * c_out, 3, padding=1, groups=g)
        self.bn2 = nn.BatchNorm2d(g * c_out)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_in == self.c_out:
            return x
        return F.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))  # zero channels

    def _rows(self, device: int) -> slice:
        """Device ``device``'s rows of every grouped parameter and statistic."""
        return slice(device * self.c_out, (device + 1) * self.c_out)

    @staticmethod
    def _conv(conv: nn.Conv2d, x: torch.Tensor, rows: slice) -> torch.Tensor:
        return F.conv2d(x, conv.weight[rows], conv.bias[rows], padding=1)

    @staticmethod
    def _bn(bn: nn.BatchNorm2d, y: torch.Tensor, rows: slice) -> torch.Tensor:
        # The running statistics are updated in place through the device's slice; the
        # stack counts num_batches_tracked once per pass, as one BatchNorm2d call would.
        return F.batch_norm(y, bn.running_mean[rows], bn.running_var[rows], bn.weight[rows],
                            bn.bias[rows], bn.training, bn.momentum, bn.eps)

    def forward(self, x: torch.Tensor, device: int = 0) -> torch.Tensor:
        """Device ``device``'s part of the block: ``(B, c_in, h, w) -> (B, c_out, h, w)``."""
        if self.groups == 1:  # the plain modules: what a single device exports to ONNX
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        else:
            rows = self._rows(device)
            y = F.relu(self._bn(self.bn1, self._conv(self.conv1, x, rows), rows))
            y = self._bn(self.bn2, self._conv(self.conv2, y, rows), rows)
        return F.relu(y + self.shortcut(x))


class _ResidualStack(nn.Module):
    """The convolutional trunk: residual blocks then global average pooling."""

    def __init__(
        self, in_channels: int, widths: Sequence[int], n_blocks: int, groups: int = 1
    ) -> None:
        super().__init__()
        chans = _block_channels(in_channels, widths, n_blocks)
        self.in_channels, self.groups = in_channels, groups
        self.blocks = nn.Sequential(*[_ResidualBlock(a, b, groups) for a, b in chans])
        self.feature_dim = chans[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, groups*C, h, w) -> pooled features (B, groups*D).

        Each device runs its own small convolutions, one after another: on CPU a training
        step took 1/1.4 of the time of one grouped convolution over all devices per layer
        (an AVX2 machine, ``docs/results/accuracy/device_layout.csv`` from
        ``scripts/device_layout_speed.py``), with the same parameters and results.
        """
        c = self.in_channels
        features = []
        for device in range(self.groups):
            y = x[:, device * c:(device + 1) * c]
            if self.groups > 1:
                # channels_last: oneDNN's convolutions run faster in NHWC on CPU.
                y = y.contiguous(memory_format=torch.channels_last)
            for block in self.blocks:
                y = block(y, device)
            features.append(y.mean(dim=(2, 3)))
        if self.groups > 1 and self.training:
            for block in self.blocks:
                for bn in (block.bn1, block.bn2):
                    bn.num_batches_tracked.add_(1)
        return torch.cat(features, dim=1) if self.groups > 1 else features[0]


class DeviceCNN(nn.Module):
    """One end-device CNN (Table 2).

    ``forward(x (B, C, h, w) float) -> (logits (B, K), features (B, D))``.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widths: Sequence[int] = (8, 16),
        n_blocks: int = 5,
    ) -> None:
        """Build one device CNN; see the module docstring for the architecture."""
        super().__init__()
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.widths, self.n_blocks = tuple(int(w) for w in widths), int(n_blocks)
        self.trunk = _ResidualStack(self.in_channels, self.widths, self.n_blocks, groups=1)
        self.feature_dim = self.trunk.feature_dim
        self.classifier = nn.Linear(self.feature_dim, self.n_classes)

    def kwargs(self) -> dict:
        """Return the constructor arguments (JSON-safe) that rebuild this module."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "widths": list(self.widths),
            "n_blocks": self.n_blocks,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits (B, K), features (B, D))`` for float input ``(B, C, h, w)``."""
        f = self.trunk(x)
        return self.classifier(f), f


class MultiDeviceCNN(nn.Module):
    """N independent device CNNs evaluated in one vectorised pass (grouped convolutions).

    ``forward(views (B, N, C, h, w) float) -> (logits (B, N, K), features (B, N, D))``.
    Parameters: ``trunk`` (grouped convs/BN, device ``i`` owns rows ``i*s:(i+1)*s`` of each
    tensor), ``head_weight`` ``(N, K, D)``, ``head_bias`` ``(N, K)``.
    """

    def __init__(
        self,
        n_devices: int,
        in_channels: int,
        n_classes: int,
        widths: Sequence[int] = (8, 16),
        n_blocks: int = 5,
    ) -> None:
        """Build N independent device CNNs (randomly initialised) in grouped layout."""
        super().__init__()
        if n_devices < 1:
            raise ValueError("n_devices must be >= 1")
        self.n_devices = int(n_devices)
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.widths, self.n_blocks = tuple(int(w) for w in widths), int(n_blocks)
        self.trunk = _ResidualStack(
            self.in_channels, self.widths, self.n_blocks, groups=self.n_devices
        )
        self.feature_dim = self.trunk.feature_dim
        n, k, d = self.n_devices, self.n_classes, self.feature_dim
        self.head_weight = nn.Parameter(torch.empty(n, k, d))
        self.head_bias = nn.Parameter(torch.empty(n, k))
        self._init_heads()

    def _init_heads(self) -> None:
        # Same distribution as nn.Linear's default init, per device.
        bound = 1.0 / self.feature_dim**0.5
        nn.init.uniform_(self.head_weight, -bound, bound)
        nn.init.uniform_(self.head_bias, -bound, bound)

    def kwargs(self) -> dict:
        """Return the constructor arguments (JSON-safe) that rebuild this module."""
        return {
            "n_devices": self.n_devices,
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "widths": list(self.widths),
            "n_blocks": self.n_blocks,
        }

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits (B, N, K), features (B, N, D))`` for float ``(B, N, C, h, w)``."""
        b, n, c, h, w = views.shape
        if n != self.n_devices or c != self.in_channels:
            raise ValueError(
                f"expected views (B, {self.n_devices}, {self.in_channels}, h, w), "
                f"got {tuple(views.shape)}"
            )
        f = self.trunk(views.reshape(b, n * c, h, w)).reshape(b, n, self.feature_dim)
        logits = torch.einsum("bnd,nkd->bnk", f, self.head_weight) + self.head_bias
        return logits, f

    @torch.no_grad()
    def average_devices(self) -> None:
        """Set every device's parameters and BN statistics to their mean over the devices.

        One FedAvg aggregation with equal client weights: afterwards all N devices hold the
        same model.
        """
        n = self.n_devices
        for t in [*self.parameters(), *self.buffers()]:
            if t.ndim == 0 or not t.is_floating_point():  # num_batches_tracked
                continue
            per_device = t.view(n, -1, *t.shape[1:])  # a view: the copy below writes t
            per_device.copy_(per_device.mean(dim=0, keepdim=True).expand_as(per_device))

    def classifier_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the N classifier heads ``(W (N, K, D), b (N, K))`` (live parameters)."""
        return self.head_weight, self.head_bias

    @torch.no_grad()
    def device(self, i: int) -> DeviceCNN:
        """Return an independent :class:`DeviceCNN` copy of device ``i`` (params + BN buffers)."""
        if not 0 <= i < self.n_devices:
            raise IndexError(f"device {i} out of range 0..{self.n_devices - 1}")
        dev = DeviceCNN(self.in_channels, self.n_classes, self.widths, self.n_blocks)
        src = self.trunk.state_dict()
        dst = {}
        for name, t in src.items():
            if t.ndim == 0:  # num_batches_tracked: shared counter
                dst[name] = t.clone()
            else:
                s = t.shape[0] // self.n_devices
                dst[name] = t[i * s : (i + 1) * s].clone()
        dev.trunk.load_state_dict(dst)
        dev.classifier.weight.copy_(self.head_weight[i])
        dev.classifier.bias.copy_(self.head_bias[i])
        dev.train(self.training)
        return dev

    @classmethod
    @torch.no_grad()
    def from_devices(cls, devices: Sequence[DeviceCNN]) -> MultiDeviceCNN:
        """Build a grouped model from N identically-shaped :class:`DeviceCNN`s (copies)."""
        if not devices:
            raise ValueError("need at least one device")
        d0 = devices[0]
        for d in devices[1:]:
            if d.kwargs() != d0.kwargs():
                raise ValueError("all devices must have the same architecture")
        model = cls(len(devices), d0.in_channels, d0.n_classes, d0.widths, d0.n_blocks)
        states = [d.trunk.state_dict() for d in devices]
        merged = {}
        for name, t in states[0].items():
            merged[name] = t.clone() if t.ndim == 0 else torch.cat([s[name] for s in states])
        model.trunk.load_state_dict(merged)
        model.head_weight.copy_(torch.stack([d.classifier.weight for d in devices]))
        model.head_bias.copy_(torch.stack([d.classifier.bias for d in devices]))
        model.train(d0.training)
        return model
