"""Core utilities every layer may use: atomic file writes."""
