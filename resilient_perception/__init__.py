"""resilient_perception: fault-tolerant multi-camera perception for ROS 2 robot fleets.

Rooms by concern, each importing only the rooms below it:

* ``commands`` and ``cli``: the ``resilient-perception`` command;
* ``bench``: benchmarks and the demo; ``harness``: starting and watching node processes;
* ``ros``: the rclpy nodes and their plumbing (topic contract, image conversion, bags);
* ``perception``, ``placement``, ``paper``: the ROS-free algorithms of the two papers and
  their reproductions;
* ``datasets`` and ``checkpoints``: shared by the rooms above.
"""

__version__ = "0.1.0"
