"""Importing the optional packages some stores need, with an error that says
what to install."""

from __future__ import annotations

import importlib
import types

__all__ = ["require"]


def require(module: str, *, extra: str, needed_by: str) -> types.ModuleType:
    """Import ``module``, or raise :class:`ImportError` naming the extra to install.

    ``require("redis", extra="redis", needed_by="RedisStore")`` raises
    ``RedisStore needs the redis package: pip install "flask-traffic[redis]".``

    :param module: the module to import.
    :param extra: the flask-traffic extra that installs it.
    :param needed_by: the class or feature that needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.partition(".")[0]
        raise ImportError(
            f'{needed_by} needs the {top} package: pip install "flask-traffic[{extra}]".'
        ) from None
