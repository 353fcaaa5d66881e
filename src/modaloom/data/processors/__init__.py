"""Processors per data type; importing this package registers them all (kind "processor")."""

from modaloom.data.processors import base  # noqa: F401
