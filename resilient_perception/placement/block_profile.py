"""The block profile of a block-addressable ResNet: the data the placement optimiser reads.

A profile is one JSON file (``profile.json``, written by ``resilient-perception drop-study``)::

    {"model": "<name>", "dataset": "cifar10", "input_shape": [3, 32, 32], "dtype_bytes": 4,
     "clean_accuracy": 0.9, "seed": 0,
     "stem":  {"name": "stem", "param_bytes": int, "macs": int,
               "input_bytes": int, "output_bytes": int},
     "blocks": [{"name": "stage1.block0", "stage": 1, "param_bytes": int, "macs": int,
                 "input_bytes": int, "output_bytes": int, "has_projection": bool}, ...],
     "head":  {"name": "head", ...same keys as stem},
     "drop_accuracy": [{"dropped": [i], "accuracy": float}, ...,
                       {"dropped": [i, j], "accuracy": float}, ...]}

Costs are per image: ``param_bytes`` is the memory of the stage's weights (parameters and
BatchNorm running statistics, ``dtype_bytes`` each; the paper's Eq. 1), ``macs`` the
multiply-accumulates of its convolutions and linear layers (the paper's Eq. 2),
``input_bytes``/``output_bytes`` the size of the activation tensor it receives/sends (what
crosses a link when consecutive blocks sit on different robots). Block indices are
``0..M-1`` in network order. ``drop_accuracy`` holds the test accuracy (a fraction) with the
residual branch ("direct connection", DC) of every single block and every pair of blocks
dropped; the empty drop set is ``clean_accuracy``.

This module has no torch import so that planners can read profiles without it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "BlockCost",
    "BlockProfile",
    "LayerCost",
    "ProfileError",
    "load_profile",
    "save_profile",
]

MAX_DROPPED = 2
"""The drop study measures single blocks and pairs (the paper's Table II)."""


class ProfileError(ValueError):
    """A block profile file or object does not follow the documented format."""


@dataclass(frozen=True)
class LayerCost:
    """Per-image cost of one part of the network (stem, a residual block or the head)."""

    name: str
    param_bytes: int
    macs: int
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class BlockCost(LayerCost):
    """A residual block's cost; ``stage`` counts from 1 as in ResNet-50's conv2_x..conv5_x."""

    stage: int = 0
    has_projection: bool = False


@dataclass(frozen=True)
class BlockProfile:
    """Costs of every part of a ResNet plus the accuracy with blocks dropped.

    ``drop_accuracy`` maps a sorted tuple of dropped block indices (one or two) to the test
    accuracy with those blocks' residual branches dropped. Use :meth:`accuracy` to look up
    any drop set, including the empty one.
    """

    model: str
    dataset: str
    input_shape: tuple[int, ...]
    dtype_bytes: int
    clean_accuracy: float
    seed: int
    stem: LayerCost
    blocks: tuple[BlockCost, ...]
    head: LayerCost
    drop_accuracy: Mapping[tuple[int, ...], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate the profile; raises :class:`ProfileError` naming the bad field."""
        _validate(self)

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks (M)."""
        return len(self.blocks)

    def accuracy(self, dropped: Iterable[int]) -> float:
        """Test accuracy with the blocks in ``dropped`` DC-dropped (empty = clean)."""
        key = tuple(sorted(set(dropped)))
        if not key:
            return self.clean_accuracy
        if key not in self.drop_accuracy:
            raise KeyError(f"drop set {list(key)} was not measured; the profile has every "
                           f"set of 1..{MAX_DROPPED} of the {self.n_blocks} blocks")
        return self.drop_accuracy[key]

    def to_dict(self) -> dict:
        """The JSON-ready dict of the documented format."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "dtype_bytes": self.dtype_bytes,
            "clean_accuracy": self.clean_accuracy,
            "seed": self.seed,
            "stem": asdict(self.stem),
            "blocks": [asdict(block) for block in self.blocks],
            "head": asdict(self.head),
            "drop_accuracy": [
                {"dropped": list(key), "accuracy": value}
                for key, value in sorted(self.drop_accuracy.items(),
                                         key=lambda item: (len(item[0]), item[0]))
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "profile") -> BlockProfile:
        """Build and validate a profile from its JSON dict; errors name ``source``."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in _TOP_KEYS if key not in data]
        if missing:
            raise ProfileError(f"{source}: missing keys {missing}; a profile needs {_TOP_KEYS}")
        try:
            blocks = data["blocks"]
            if not isinstance(blocks, list):
                raise ProfileError("'blocks' must be a list")
            drops = {}
            for entry in _as_list(data["drop_accuracy"], "drop_accuracy"):
                key = tuple(_as_list(_field(entry, "dropped", "drop_accuracy entry"),
                                     "dropped"))
                if key in drops:
                    raise ProfileError(f"drop set {list(key)} is listed twice")
                drops[key] = _field(entry, "accuracy", "drop_accuracy entry")
            return cls(
                model=data["model"],
                dataset=data["dataset"],
                input_shape=tuple(_as_list(data["input_shape"], "input_shape")),
                dtype_bytes=data["dtype_bytes"],
                clean_accuracy=data["clean_accuracy"],
                seed=data["seed"],
                stem=_cost(LayerCost, data["stem"], "stem"),
                blocks=tuple(_cost(BlockCost, block, f"blocks[{i}]")
                             for i, block in enumerate(blocks)),
                head=_cost(LayerCost, data["head"], "head"),
                drop_accuracy=drops,
            )
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None


_TOP_KEYS = ["model", "dataset", "input_shape", "dtype_bytes", "clean_accuracy", "seed",
             "stem", "blocks", "head", "drop_accuracy"]
_COST_INTS = ("param_bytes", "macs", "input_bytes", "output_bytes")


def _as_list(value, what: str) -> list:
    if not isinstance(value, list):
        raise ProfileError(f"'{what}' must be a list, got {type(value).__name__}")
    return value


def _field(entry, key: str, what: str):
    if not isinstance(entry, Mapping) or key not in entry:
        raise ProfileError(f"each {what} needs a '{key}' key, got {entry!r}")
    return entry[key]


def _cost(kind: type[LayerCost], entry, where: str) -> LayerCost:
    if not isinstance(entry, Mapping):
        raise ProfileError(f"'{where}' must be an object, got {type(entry).__name__}")
    names = [f for f in kind.__dataclass_fields__]
    missing = [name for name in names if name not in entry]
    if missing:
        raise ProfileError(f"'{where}' is missing {missing}")
    return kind(**{name: entry[name] for name in names})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def _check_cost(cost: LayerCost, where: str) -> None:
    if not isinstance(cost.name, str) or not cost.name:
        raise ProfileError(f"{where}.name must be a non-empty string, got {cost.name!r}")
    for key in _COST_INTS:
        value = getattr(cost, key)
        if not _is_int(value) or value < 0:
            raise ProfileError(f"{where}.{key} must be a non-negative integer, got {value!r}")
    if isinstance(cost, BlockCost):
        if not _is_int(cost.stage) or cost.stage < 1:
            raise ProfileError(f"{where}.stage must be an integer >= 1, got {cost.stage!r}")
        if not isinstance(cost.has_projection, bool):
            raise ProfileError(f"{where}.has_projection must be true or false, "
                               f"got {cost.has_projection!r}")


def _validate(profile: BlockProfile) -> None:
    for key in ("model", "dataset"):
        if not isinstance(getattr(profile, key), str):
            raise ProfileError(f"'{key}' must be a string")
    shape = profile.input_shape
    if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
        raise ProfileError(f"'input_shape' must be 3 positive integers [C, H, W], got "
                           f"{list(shape)}")
    if not _is_int(profile.dtype_bytes) or profile.dtype_bytes < 1:
        raise ProfileError(f"'dtype_bytes' must be a positive integer, got "
                           f"{profile.dtype_bytes!r}")
    if not _is_fraction(profile.clean_accuracy):
        raise ProfileError(f"'clean_accuracy' must be a fraction in [0, 1], got "
                           f"{profile.clean_accuracy!r}")
    if not _is_int(profile.seed):
        raise ProfileError(f"'seed' must be an integer, got {profile.seed!r}")
    if not profile.blocks:
        raise ProfileError("'blocks' must list at least one residual block")
    for where, cost, kind in [("stem", profile.stem, LayerCost), ("head", profile.head, LayerCost),
                              *((f"blocks[{i}]", b, BlockCost)
                                for i, b in enumerate(profile.blocks))]:
        if not isinstance(cost, kind):
            raise ProfileError(f"'{where}' must be a {kind.__name__}")
        _check_cost(cost, where)
    for before, after in itertools.pairwise([profile.stem, *profile.blocks, profile.head]):
        if before.output_bytes != after.input_bytes:
            raise ProfileError(f"{before.name} outputs {before.output_bytes} bytes but the next "
                               f"part, {after.name}, takes {after.input_bytes}")
    n = profile.n_blocks
    expected = {key for size in range(1, MAX_DROPPED + 1)
                for key in itertools.combinations(range(n), size)}
    for key, value in profile.drop_accuracy.items():
        if key not in expected:
            raise ProfileError(f"drop_accuracy: 'dropped' must be 1..{MAX_DROPPED} distinct "
                               f"increasing block indices in 0..{n - 1}, got {list(key)}")
        if not _is_fraction(value):
            raise ProfileError(f"drop_accuracy {list(key)}: accuracy must be a fraction in "
                               f"[0, 1], got {value!r}")
    missing = sorted(expected - set(profile.drop_accuracy), key=lambda k: (len(k), k))
    if missing:
        shown = ", ".join(str(list(k)) for k in missing[:5])
        raise ProfileError(f"drop_accuracy lacks {len(missing)} of the {len(expected)} drop "
                           f"sets (every single block and pair), e.g. {shown}")


def load_profile(path: str | Path) -> BlockProfile:
    """Read and validate a ``profile.json``; raises :class:`ProfileError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such file (expected a profile.json written by "
                           "`resilient-perception drop-study`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not a readable JSON file ({exc})") from exc
    return BlockProfile.from_dict(data, source=str(path))


def save_profile(path: str | Path, profile: BlockProfile) -> Path:
    """Write ``profile`` as indented JSON to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path
