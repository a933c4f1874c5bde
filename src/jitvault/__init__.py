"""jitvault: a self-hosted just-in-time privileged access broker."""

__version__ = "0.1.0"
__all__ = ["__version__"]
