"""sanitel — the composition root: settings, command line, local stack. No domain logic here."""

__version__ = "0.1.0"
