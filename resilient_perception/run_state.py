"""Per-epoch resumable training state: tensors in safetensors, everything else in JSON.

A long run (hours on a CPU) must survive being killed at any moment and continue from its
last finished epoch. :func:`save_state` writes ONE file, ``<dir>/state.safetensors``,
holding the model's and the EMA model's state dicts, the optimiser's tensors (momentum
buffers) and torch's RNG state as tensors, and as JSON metadata the optimiser's
hyper-parameters, the epoch, both numpy and torch-independent RNG states, the per-epoch
metrics log and the run's settings. The write is atomic (temporary file in the same
directory, ``fsync``, ``os.replace``), so a kill leaves the previous epoch's state or the new
one, never a torn file.

Nothing is pickled: the file names no Python class, so a state stays loadable when the
modules that trained it are moved or renamed. The caller rebuilds its model and optimiser
from its own settings and :func:`restore_optimizer` puts the saved tensors back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .checkpoints import write_safetensors

__all__ = [
    "METRICS_NAME",
    "STATE_NAME",
    "check_same_run",
    "code_commit",
    "load_state",
    "read_state_meta",
    "optimizer_tensors",
    "restore_optimizer",
    "save_epoch",
    "save_state",
    "what_it_trains",
    "write_json_atomic",
]

STATE_NAME = "state.safetensors"
METRICS_NAME = "metrics.json"
_META_KEY = "run_state"
COMMIT_ENV = "RESILIENT_PERCEPTION_COMMIT"
# Recipe fields that say how a run computes, not what it trains: a run carried to another
# machine continues in the precision that is fastest there (each epoch's log names it).
HOW_NOT_WHAT = ("precision",)


def code_commit() -> str:
    """The commit of the code that runs, recorded in every run's metadata.

    ``$RESILIENT_PERCEPTION_COMMIT`` when set (the lane script runs a snapshot of that
    commit), else ``git rev-parse HEAD`` of this checkout, with ``-dirty`` when it has changes.
    """
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def what_it_trains(recipe: dict) -> dict:
    """``recipe`` without the fields that say how a run computes (:data:`HOW_NOT_WHAT`)."""
    return {k: v for k, v in recipe.items() if k not in HOW_NOT_WHAT}


def check_same_run(directory: Path, saved: dict, settings: dict) -> None:
    """Raise ``ValueError`` unless a saved run's settings are ``settings``.

    Both are ``{"recipe": {...}, ...}``; the recipe's :data:`HOW_NOT_WHAT` fields may differ.
    """
    def what(run: dict) -> dict:
        return {**run, "recipe": what_it_trains(run["recipe"])}

    if what(saved) != what(settings):
        raise ValueError(f"{directory} holds a run with other settings ({saved}); "
                         "pass the same options or choose another output folder")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``"<param>.<key>"``) and JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    """Load what :func:`optimizer_tensors` returned into a fresh optimiser of the same params."""
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(directory: Path, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, meta: dict) -> Path:
    """Atomically write ``<directory>/state.safetensors``.

    ``modules`` maps a prefix (e.g. ``"model"``, ``"ema"``) to a module whose state dict is
    saved under it; ``meta`` (JSON-safe: epoch, metrics log, numpy RNG state, settings) is
    stored beside the optimiser's hyper-parameters. torch's RNG state is saved too.
    """
    directory = Path(directory)
    tensors = {f"{prefix}.{k}": v for prefix, module in modules.items()
               for k, v in module.state_dict().items()}
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps({**meta, "optimizer": opt_meta})}
    return write_safetensors(directory / STATE_NAME, tensors, header)


def save_epoch(directory: Path, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, settings: dict, log: list[dict],
               rng: Any) -> None:
    """End of an epoch of a resumable run: its state (to resume) and ``metrics.json``.

    ``rng`` is the run's numpy Generator; ``log`` has one entry per finished epoch.
    """
    save_state(directory, modules, optimizer,
               {"settings": settings, "log": log, "epoch": len(log),
                "numpy_rng": rng.bit_generator.state, "commit": code_commit(),
                "torch_threads": torch.get_num_threads()})
    write_json_atomic(Path(directory) / METRICS_NAME, {"settings": settings, "log": log})


def load_state(directory: Path, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore a :func:`save_state` file into ``modules`` and ``optimizer``; return its meta.

    Returns ``None`` when there is no state yet (a fresh run). Sets torch's RNG state.
    """
    path = Path(directory) / STATE_NAME
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[_META_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    for prefix, module in modules.items():
        part = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(part, strict=True)
    restore_optimizer(optimizer, {k.removeprefix("optimizer."): v for k, v in tensors.items()
                                  if k.startswith("optimizer.")}, meta.pop("optimizer"))
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def read_state_meta(directory: Path) -> dict | None:
    """The JSON metadata of ``<directory>/state.safetensors`` (no tensors), or ``None``."""
    path = Path(directory) / STATE_NAME
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()[_META_KEY])
