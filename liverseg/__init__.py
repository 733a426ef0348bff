"""liverseg: liver (and other organ) segmentation in CT, with exact geometry."""

__version__ = "0.1.0"
