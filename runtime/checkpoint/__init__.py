"""Checkpoint and restore of containers with CRIU (criu probing, dump, the archive format)."""
