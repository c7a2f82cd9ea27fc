"""Test fixtures: idp (filled in by its owner)."""
