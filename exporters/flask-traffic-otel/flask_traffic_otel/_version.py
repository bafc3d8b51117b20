"""The distribution's version, read by the build backend too."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "1.0.0.dev0"
