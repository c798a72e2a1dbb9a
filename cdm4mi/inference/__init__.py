"""Inference: trained models applied to whole scans (slice-batched 2D, sliding-window 3D)."""
