"""Losses of the course's detectors."""

__all__: list[str] = []
