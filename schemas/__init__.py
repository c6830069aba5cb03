"""Versioned message contracts and the JSON codec shared by every topic."""
