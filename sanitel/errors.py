"""Errors the command line reports as one clear message (never a traceback)."""


class SanitelError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(SanitelError):
    """Settings, rules or scenario files that do not validate."""
