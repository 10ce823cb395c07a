"""Names users give to datasets, models and keys.

A name is a slug: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100
characters. Names never become part of a file path (folders are named by ids), but they appear in
download file names, logs and model references such as ``name@alias``, where '/', quotes, spaces
or control characters would break something.
"""

from __future__ import annotations

import re

SLUG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def is_slug(name: str) -> bool:
    return _SLUG.fullmatch(name) is not None


def slugify(text: str, default: str = "dataset") -> str:
    """A slug made from free text (an uploaded file's name): invalid runs become '-'."""
    slug = _INVALID.sub("-", text).lstrip("._-")[:100].rstrip("-")
    return slug if is_slug(slug) else default
