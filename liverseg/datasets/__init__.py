"""Datasets: which cases exist, where their files are, and checking them before training.

* ``manifest``: liverseg JSON and MSD ``dataset.json`` manifests, fixed splits, checksums;
* ``nnunet``: nnU-Net v2 raw datasets read as manifests;
* ``photo_manifests``: importers for the public retinal-vessel datasets;
* ``download``: resumable, checksum-verified downloads;
* ``check``: ``liverseg check``, every case read and verified.
"""
