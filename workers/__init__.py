"""Dramatiq broker setup and the thin actors that project events into Redis."""
