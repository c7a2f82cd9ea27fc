"""Test fixtures: redis (filled in by its owner)."""
