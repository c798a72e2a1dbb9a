"""Evaluation: metrics, statistics and figures."""
