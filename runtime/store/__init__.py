"""Durable state: the SQLite metadata store, the record codec and atomic file writes."""

from runtime.store.codec import from_json, to_json
from runtime.store.db import Migration, Store, StoreCorrupt
from runtime.store.files import atomic_write

__all__ = ["Migration", "Store", "StoreCorrupt", "atomic_write", "from_json", "to_json"]
