"""Starting and watching node processes.

:class:`.pipeline.Pipeline` starts the launch file's nodes as OS processes and
:class:`.pipeline.Observer` watches their topics; :mod:`.stream_monitor` scores the fused
stream live; :mod:`.distributed_run` puts robot fleets in network namespaces. Used by the
benchmarks, the demo and the tests; the nodes themselves are in :mod:`..ros`.
"""
