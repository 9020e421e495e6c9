"""Errors a user can act on: each names the file (or URI), the problem and the fix.

Raised instead of letting numpy/PIL/minio tracebacks surface from deep inside a library, so that a
pipeline log says what to do in one line.
"""
from __future__ import annotations

__all__ = ["OsegError", "DataError", "StorageError", "ConfigError"]


class OsegError(Exception):
    """Base error: ``"{path}: {problem}. Fix: {fix}"``."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path, self.problem, self.fix = str(path), problem, fix
        msg = f"{self.path}: {problem}"
        super().__init__(f"{msg}. Fix: {fix}" if fix else msg)


class DataError(OsegError):
    """Input data is missing, malformed or inconsistent."""


class StorageError(OsegError):
    """A storage operation failed (unreachable endpoint, bad credentials, corrupt object)."""


class ConfigError(OsegError):
    """A configuration file or override is invalid."""
