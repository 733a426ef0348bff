"""Modalities: what differs between CT volumes and 2D photographs, behind one small interface."""
