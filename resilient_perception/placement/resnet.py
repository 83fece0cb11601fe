"""A block-addressable bottleneck ResNet with the ResNet-50 stage layout, sized for CIFAR-10.

Architecture (defaults: ``base_width=8``, ``expansion=4``, ``stage_blocks=(3, 4, 6, 3)``)::

    stem    conv3x3(3 -> w) + BN + ReLU                          32x32, w = base_width
    stage s (s = 1..4): stage_blocks[s-1] bottleneck blocks, mid width w * 2**(s-1),
            output width mid * expansion; the first block of stages 2-4 has stride 2
    head    global average pooling + linear(256 -> 10)

ResNet-50 for ImageNet has the same 16 bottleneck blocks (3-4-6-3) with base width 64 and a
7x7 stride-2 stem plus max pooling for 224x224 inputs. For 32x32 CIFAR images the stem is
one 3x3 convolution without pooling (as in the ResNet paper's CIFAR networks), so the four
stages see 32x32, 16x16, 8x8 and 4x4 maps. The base width is 8 (ResNet-50's 64 / 8): 0.38 M
parameters and 20 M multiply-accumulates per image, so one epoch of CIFAR-10 takes minutes on
one CPU thread; width 16 is 4x the compute (see docs/results/resnet/tables.md).

A bottleneck block computes ``relu(branch(x) + shortcut(x))`` where ``branch`` is
``1x1 -> 3x3 (stride) -> 1x1`` convolutions with BN (ReLU between them) and ``shortcut`` is
the identity, or a strided 1x1 convolution + BN (a "projection") where the shape changes.
The paper calls the branch the "direct connection" (DC) and the shortcut the "skip
connection" (SC). Dropping one sets its term of the sum to zero:

* DC dropped: ``relu(shortcut(x))`` (= ``x`` for an identity block, as ``x >= 0``);
* SC dropped: ``relu(branch(x))``.

Stochastic depth (Huang et al. 2016, "linear decay"): with ``stochastic_depth=P`` block ``i``
of ``M`` drops its branch during training with probability ``P * (i + 1) / M`` for the whole
mini-batch (the paper's per-batch rule, which also saves the branch's compute). Kept
branches are scaled by ``1 / (1 - p_i)`` during training ("inverted" scaling, as in
torchvision and timm) so that evaluation uses the plain network, the same one the drop study
cuts blocks from.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_module, save_module
from .block_profile import BlockCost, LayerCost

__all__ = [
    "DROP_MODES",
    "Bottleneck",
    "ResNet",
    "load_resnet_checkpoint",
    "module_macs",
    "profile_blocks",
    "save_resnet_checkpoint",
    "trace_costs",
    "weight_bytes",
]

DROP_MODES = ("none", "dc", "sc")
"""How a block runs: complete, DC (residual branch) dropped, or SC (shortcut) dropped."""


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


class Bottleneck(nn.Module):
    """One bottleneck residual block: ``relu(branch(x) + shortcut(x))``."""

    def __init__(self, in_channels: int, mid_channels: int, expansion: int, stride: int):
        """Build ``in -> mid (1x1) -> mid (3x3, stride) -> mid * expansion (1x1)``."""
        super().__init__()
        out_channels = mid_channels * expansion
        self.branch = nn.Sequential(
            *_conv_bn(in_channels, mid_channels, 1), nn.ReLU(inplace=True),
            *_conv_bn(mid_channels, mid_channels, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(mid_channels, out_channels, 1),
        )
        # The last BN of the branch starts at zero ("zero-init residual", Goyal et al. 2017):
        # every block begins as its shortcut, which speeds up short CPU training runs.
        nn.init.zeros_(self.branch[-1].weight)
        self.has_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
                         if self.has_projection else nn.Identity())

    def forward(self, x: torch.Tensor, mode: str = "none", branch_scale: float = 1.0
                ) -> torch.Tensor:
        """Run the block; ``mode`` is one of :data:`DROP_MODES`.

        ``branch_scale`` multiplies the branch (stochastic depth's inverted scaling).
        """
        if mode == "dc":
            return F.relu(self.shortcut(x))
        if mode == "sc":
            return F.relu(self.branch(x))
        if mode != "none":
            raise ValueError(f"mode must be one of {DROP_MODES}, got {mode!r}")
        branch = self.branch(x)
        if branch_scale != 1.0:
            branch = branch * branch_scale
        return F.relu(branch + self.shortcut(x))


class ResNet(nn.Module):
    """Bottleneck ResNet whose residual blocks can be run, DC-dropped or SC-dropped one by one.

    Blocks are numbered ``0..n_blocks-1`` in network order; :attr:`block_names` gives
    ``"stage<s>.block<b>"`` names.
    """

    def __init__(
        self,
        base_width: int = 8,
        expansion: int = 4,
        stage_blocks: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 10,
        in_channels: int = 3,
        stochastic_depth: float = 0.0,
    ):
        """Build the network; ``stochastic_depth`` is the last block's drop probability."""
        super().__init__()
        if base_width < 1 or expansion < 1 or num_classes < 2 or in_channels < 1:
            raise ValueError("base_width, expansion, in_channels must be >= 1, num_classes >= 2")
        if not stage_blocks or any(n < 1 for n in stage_blocks):
            raise ValueError(f"stage_blocks must be positive counts, got {list(stage_blocks)}")
        if not 0.0 <= stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
        self._kwargs = {
            "base_width": base_width, "expansion": expansion,
            "stage_blocks": list(stage_blocks), "num_classes": num_classes,
            "in_channels": in_channels, "stochastic_depth": stochastic_depth,
        }
        self.stem = nn.Sequential(*_conv_bn(in_channels, base_width, 3), nn.ReLU(inplace=True))
        blocks, names, stages = [], [], []
        channels = base_width
        for stage, count in enumerate(stage_blocks):
            mid = base_width * 2**stage
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(Bottleneck(channels, mid, expansion, stride))
                channels = mid * expansion
                names.append(f"stage{stage + 1}.block{b}")
                stages.append(stage + 1)
        self.blocks = nn.ModuleList(blocks)
        self.block_names: tuple[str, ...] = tuple(names)
        self.block_stages: tuple[int, ...] = tuple(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))
        n = len(blocks)
        self.drop_probabilities: tuple[float, ...] = tuple(
            stochastic_depth * (i + 1) / n for i in range(n))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def kwargs(self) -> dict:
        """Constructor arguments (JSON-safe), stored in checkpoints."""
        return dict(self._kwargs)

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks."""
        return len(self.blocks)

    def _modes(self, drop_dc: Collection[int], drop_sc: Collection[int]) -> list[str]:
        dc, sc = set(drop_dc), set(drop_sc)
        bad = sorted(i for i in dc | sc if not (isinstance(i, int) and 0 <= i < self.n_blocks))
        if bad:
            raise ValueError(f"block indices must be in 0..{self.n_blocks - 1}, got {bad}")
        if dc & sc:
            raise ValueError(f"blocks {sorted(dc & sc)} cannot drop both DC and SC")
        return ["dc" if i in dc else "sc" if i in sc else "none" for i in range(self.n_blocks)]

    def run_block(self, index: int, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
        """Run residual block ``index`` alone on its input activation ``x``."""
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block index must be in 0..{self.n_blocks - 1}, got {index}")
        return self.blocks[index](x, mode)

    def forward_from(self, start: int, x: torch.Tensor, drop_dc: Collection[int] = frozenset(),
                     drop_sc: Collection[int] = frozenset()) -> torch.Tensor:
        """Logits from the input activation of block ``start`` (``n_blocks`` = head only)."""
        modes = self._modes(drop_dc, drop_sc)
        for i in range(start, self.n_blocks):
            p = self.drop_probabilities[i]
            if self.training and p > 0 and modes[i] == "none":
                # Stochastic depth: one coin per mini-batch and block.
                if torch.rand(()) < p:
                    x = self.blocks[i](x, "dc")
                else:
                    x = self.blocks[i](x, "none", branch_scale=1.0 / (1.0 - p))
            else:
                x = self.blocks[i](x, modes[i])
        return self.head(x)

    def forward(self, x: torch.Tensor, drop_dc: Collection[int] = frozenset(),
                drop_sc: Collection[int] = frozenset()) -> torch.Tensor:
        """Logits of images ``x`` (float, normalised) with the given blocks' DC or SC dropped."""
        return self.forward_from(0, self.stem(x), drop_dc, drop_sc)


def _macs_of(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one conv/linear call per image, from its real shapes."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def weight_bytes(module: nn.Module, dtype_bytes: int = 4) -> int:
    """Bytes of the weights needed at inference: parameters and floating-point buffers."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return dtype_bytes * sum(t.numel() for t in tensors if t.is_floating_point())


def trace_costs(model: ResNet, input_shape: Sequence[int] = (3, 32, 32)
                ) -> tuple[dict[nn.Module, int], list[tuple[int, int]]]:
    """One forward pass of a zero image, part by part (stem, blocks, head).

    Returns the MACs per image of every convolution and linear layer (the paper's Eq. 2:
    output elements x input channels per group x kernel area) and, per part, the element
    counts of its input and output activation.
    """
    macs: dict[nn.Module, int] = {}

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs[module] = macs.get(module, 0) + _macs_of(module, output)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, nn.Conv2d | nn.Linear)]
    sizes = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.zeros(1, *input_shape)
            for part in [model.stem, *model.blocks, model.head]:
                y = part(x)
                sizes.append((x.numel(), y.numel()))
                x = y
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return macs, sizes


def module_macs(module: nn.Module, macs: dict[nn.Module, int]) -> int:
    """Total MACs of ``module``'s layers in a :func:`trace_costs` result."""
    return sum(macs.get(m, 0) for m in module.modules())


def profile_blocks(
    model: ResNet, input_shape: Sequence[int] = (3, 32, 32), dtype_bytes: int = 4
) -> tuple[LayerCost, list[BlockCost], LayerCost]:
    """Per-image costs of the stem, every residual block and the head of ``model``.

    MACs come from :func:`trace_costs` (Eq. 2); memory is the weights' element count times
    ``dtype_bytes`` (Eq. 1, :func:`weight_bytes`); input/output bytes are the activation
    sizes each part receives and sends.
    """
    macs, sizes = trace_costs(model, input_shape)

    def cost(name: str, module: nn.Module, io: tuple[int, int]) -> dict:
        return {"name": name, "param_bytes": weight_bytes(module, dtype_bytes),
                "macs": module_macs(module, macs),
                "input_bytes": io[0] * dtype_bytes, "output_bytes": io[1] * dtype_bytes}

    stem = LayerCost(**cost("stem", model.stem, sizes[0]))
    head = LayerCost(**cost("head", model.head, sizes[-1]))
    blocks = [
        BlockCost(**cost(name, block, io), stage=stage, has_projection=block.has_projection)
        for name, block, stage, io in zip(model.block_names, model.blocks, model.block_stages,
                                          sizes[1:-1], strict=True)
    ]
    return stem, blocks, head


def save_resnet_checkpoint(path, model: ResNet, metadata: dict | None = None,
                           extra: dict | None = None) -> Path:
    """Atomically save a :class:`ResNet`, metadata and ``extra`` tensors (training state).

    The checkpoint kind is ``resnet``, in the shared format of :mod:`..checkpoints`.
    """
    return save_module(path, model, "resnet", metadata, extra)


def load_resnet_checkpoint(path) -> tuple[ResNet, dict, dict]:
    """Load ``(ResNet in eval mode, metadata, extra tensors)``; raises ``CheckpointError``."""
    return load_module(path, "resnet", ResNet)
