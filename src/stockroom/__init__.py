"""Stockroom: an async inventory service."""

__version__ = "0.1.0"
