"""Background work: the worker loop (re-encryption now; expiry and rotation queues later)."""

from jitvault.lifecycle.worker import Worker

__all__ = ["Worker"]
