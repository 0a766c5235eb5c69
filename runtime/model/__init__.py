"""Frozen dataclasses shared by the engine's services (specs, records, states)."""
