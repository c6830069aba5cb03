"""Retrieval-augmented early-exit CTR scoring: prompt building, exit rules, the early-exit model."""
