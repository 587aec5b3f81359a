"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class DpstreamError(Exception):
    """A problem the user can fix: bad input file, bad option, bad config."""


class ConfigError(DpstreamError):
    """An invalid configuration key or value; the message names the key."""


class InputError(DpstreamError):
    """An input that cannot be read or decoded; the message names the file."""


class OutputError(DpstreamError):
    """An output that cannot be written (exists, unknown codec, ...); the message names it."""
