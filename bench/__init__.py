"""Benchmarks of this checkout (docs/benchmarks.md); run them from the repository root."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: where the `-m bench.*` children run and whose code state is reported."""
