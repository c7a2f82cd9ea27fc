"""Test fixtures: posture (filled in by its owner)."""
