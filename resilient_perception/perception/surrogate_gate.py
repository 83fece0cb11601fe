"""Which failed sets the live fusion node gives Modifier surrogates: the gate of ``evaluate``.

``evaluate --gated`` fits, besides the gate of every Modifier option, the one the fusion node
can apply: per failed set, plain Modifier surrogates or none, chosen on the checkpoint's
held-out validation split (:mod:`..paper.gated_modifier`). It is written into the gated
result as ``surrogate_gate``::

    {"mode": "geo", "n_devices": 6, "failed_sets": {"0": true, "0,1": false, ...}}

and the fusion node's ``surrogate_gate`` parameter names that file. A failed set the gate
does not list (an evaluation limited to fewer failures) gets surrogates, as without a gate.
No torch, no ROS: the node imports this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SurrogateGate", "SurrogateGateError", "failed_set_key"]


class SurrogateGateError(ValueError):
    """A surrogate gate file that is missing, unreadable or for another fusion set-up."""


def failed_set_key(failed: tuple[int, ...]) -> str:
    """The key of a failed set in a gated result: device indices, ascending, comma-joined."""
    return ",".join(str(d) for d in sorted(failed))


@dataclass(frozen=True)
class SurrogateGate:
    """Per failed set, whether Modifier surrogates help (on held-out data) in ``mode``."""

    mode: str
    n_devices: int
    failed_sets: dict[str, bool]

    def allows(self, failed: tuple[int, ...]) -> bool:
        """Whether the devices ``failed`` get surrogates; unlisted sets do."""
        return self.failed_sets.get(failed_set_key(failed), True)

    @property
    def withheld(self) -> int:
        """How many failed sets the gate keeps surrogates from."""
        return sum(not allowed for allowed in self.failed_sets.values())

    @classmethod
    def load(cls, path: str | Path, mode: str, n_devices: int) -> SurrogateGate:
        """Read the ``surrogate_gate`` of a gated result, checked against the node's set-up.

        Raises:
            SurrogateGateError: no such file, not a gated result with a surrogate gate, or a
                gate fitted for another fusion mode or number of devices.
        """
        path = Path(path)
        try:
            record = json.loads(path.read_text())["surrogate_gate"]
            gate = cls(str(record["mode"]), int(record["n_devices"]),
                       {str(k): bool(v) for k, v in record["failed_sets"].items()})
        except FileNotFoundError:
            raise SurrogateGateError(f"{path}: no such file (write one with "
                                     "`resilient-perception evaluate CHECKPOINT --gated "
                                     f"{mode}`)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SurrogateGateError(f"{path}: not a gated result with a surrogate gate "
                                     f"({type(exc).__name__}: {exc}); write one with "
                                     "`resilient-perception evaluate CHECKPOINT --gated "
                                     f"{mode}`") from None
        if gate.mode != mode:
            raise SurrogateGateError(f"{path}: the gate was fitted for fusion mode "
                                     f"{gate.mode!r}, the node fuses by {mode!r} (gate that "
                                     f"mode: `evaluate --gated {mode}`)")
        if gate.n_devices != n_devices:
            raise SurrogateGateError(f"{path}: the gate is for {gate.n_devices} devices, the "
                                     f"node has {n_devices}")
        return gate
