"""Benchmarks (`oseg3d bench ...`): each prints a table and writes JSON. Never run from tests."""
