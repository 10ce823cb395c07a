"""``transferlab``: the distribution's public import name.

The service's code lives in the packages ``app`` and ``worker``; users import the client as
``from transferlab.client import Client``, the distribution's own name, rather than from ``app``,
a top-level name that many projects use and that says nothing about where it comes from.
"""

from app import __version__

__all__ = ["__version__"]
