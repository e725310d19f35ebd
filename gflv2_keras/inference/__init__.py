"""Inference helpers for files: reading images, drawing detections, the ``predict`` command."""
