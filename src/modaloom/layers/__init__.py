"""Reusable building blocks: attention, feed-forward, norms, positions, masks."""
