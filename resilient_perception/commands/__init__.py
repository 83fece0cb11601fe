"""The ``resilient-perception`` command, one module per command family.

Each family module has ``add_parsers(sub)``, which registers its subcommands; the shared
argparse types and output writers are in :mod:`.common`. :mod:`..cli` holds only ``main``
and the list of families. Building the parser imports no ROS: a command that needs rclpy
imports it when it runs.
"""
