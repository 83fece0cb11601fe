"""The perception room's mode names, in a module without torch.

The torch-free runtime (:mod:`.frame_assembly`, the fusion node) and the command line's
parser need these names without importing torch; :mod:`.modifier`, :mod:`.evaluation` and
:mod:`.training` take them from here.
"""

from __future__ import annotations

__all__ = ["EVALUATION_MODES", "EVAL_BATCH", "FUSED_LOSS_MODES", "FUSION_MODES", "PAPER_MODES",
           "PRECISIONS", "PROBABILITY_FLOOR", "REDUCED_PRECISIONS"]

# The paper's two poolings of device probabilities: what the reports score by default.
PAPER_MODES = ("avg", "max")
# "geo", beyond the paper: the renormalised geometric mean (the softmax of the mean
# log-probability). Each device sees part of the scene, so its evidence multiplies rather than
# adds: a class one view rules out stays unlikely however much the others like it.
FUSION_MODES = (*PAPER_MODES, "geo")
# Poolings the fused-output loss of training can score (max passes a gradient to one device
# only).
FUSED_LOSS_MODES = ("avg", "geo")
# What "geo" takes the logarithm of for a probability of 0: float32's smallest normal number.
PROBABILITY_FLOOR = 1.1754944e-38
# Majority voting is the "ensemble voting" baseline of the paper's Figure 7: scored offline
# (evaluation), not offered by the fusion node.
EVALUATION_MODES = (*FUSION_MODES, "vote")
# Training precisions: fp32, or the forward pass under bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")
# Deployment precisions of a device export beside fp32 (:mod:`.reduced_precision`).
REDUCED_PRECISIONS = ("int8", "fp16")
# Images per forward pass when scoring a split offline (devices and the ResNet): small
# batches keep the activations in the CPU's caches. On a 2-core AVX2 machine batches of 32
# scored 3.1x faster than the 1024 used before for the six devices, 2.4x faster than 500
# for the width-16 ResNet (scripts/eval_batch_speed.py); scoring the test split had been a
# sixth of a long device run's epoch.
EVAL_BATCH = 32
