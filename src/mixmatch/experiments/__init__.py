"""Experiments over many runs: grids, ablations, tables and figures, the sharpening demo."""
