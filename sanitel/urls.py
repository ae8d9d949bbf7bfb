"""URLs as shown to people: in errors, logs and /health a password never appears."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``; the host is kept exactly as written."""
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed (e.g. an unclosed IPv6 bracket): hide whatever precedes the host
        head, at, host = url.rpartition("@")
        scheme, sep, _ = head.partition("://")
        return f"{scheme}{sep}***@{host}" if at else url
    credentials, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
