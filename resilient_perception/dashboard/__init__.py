"""The live dashboard's core: its state model, camera previews and web server (no ROS).

:mod:`.state` keeps what the page shows (device tiles, fused output, rolling accuracy with
and without the Modifier, latency, events, the distributed ResNet's plan and links) from
plain values; :mod:`.server` serves ``static/`` and pushes the state to browsers over
server-sent events from a thread of its own. ``ros/dashboard_node.py`` feeds both from
the pipeline's topics.
"""
