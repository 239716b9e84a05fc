"""Errors of the result store."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot be used: malformed URL, unreachable server, unsupported database.

    The message names the URL (password masked) and what is wrong with it.
    """


class StoreURLError(StoreError):
    """The store URL itself is malformed or names a database natsbench does not support (a bad
    input, exit code 2 in the CLI, unlike a server that is down)."""


class SchemaError(StoreError):
    """The database holds no natsbench schema, an older one, or a foreign one.

    The message tells the user to run `natsbench db upgrade --db URL`.
    """
