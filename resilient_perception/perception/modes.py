"""The perception room's mode names, in a module without torch.

The torch-free runtime (:mod:`.frame_assembly`, the fusion node) and the command line's
parser need these names without importing torch; :mod:`.modifier`, :mod:`.evaluation` and
:mod:`.training` take them from here.
"""

from __future__ import annotations

__all__ = ["EVALUATION_MODES", "FUSION_MODES", "PRECISIONS", "REDUCED_PRECISIONS"]

FUSION_MODES = ("avg", "max")
# Majority voting is the "ensemble voting" baseline of the paper's Figure 7: scored offline
# (evaluation), not offered by the fusion node.
EVALUATION_MODES = (*FUSION_MODES, "vote")
# Training precisions: fp32, or the forward pass under bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")
# Deployment precisions of a device export beside fp32 (:mod:`.reduced_precision`).
REDUCED_PRECISIONS = ("int8", "fp16")
