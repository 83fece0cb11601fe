"""Benchmarks and the demo.

They start the nodes as processes (through :mod:`..harness`), drive them and measure:
latency, failure reaction, throughput, bag timing, distributed inference on shaped links.
"""
