"""Exporting a trained run: one self-describing ONNX or TorchScript file, or a MONAI bundle folder.

* ``writers``: ONNX and TorchScript files with the run's config embedded;
* ``monai_bundle``: a CT run as a MONAI bundle folder.
"""
