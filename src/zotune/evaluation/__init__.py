"""Evaluation: candidate scoring, answer decoding, task metrics, the no-training baselines."""
