"""Tiled inference: tile planning, batching, and stitching of dense maps and boxes.

Import the parts from their modules (``dynamicvis_cli.infer.tiling`` …); this package module
imports nothing, so that ``dynamicvis_cli.infer.batch`` stays free of torch.
"""
