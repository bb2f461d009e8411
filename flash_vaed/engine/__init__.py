"""Decode engine: explicit streaming state, temporal windows and spatial tiles."""
