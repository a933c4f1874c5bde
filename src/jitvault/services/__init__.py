"""Use cases: the only layer composing storage, crypto, audit and plugins."""

from jitvault.services.node import Node, Tx
from jitvault.services.vault import SealState, SealStatus, Vault

__all__ = ["Node", "SealState", "SealStatus", "Tx", "Vault"]
