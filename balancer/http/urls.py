"""URLs for a listening address: the one place an IPv6 literal gets its brackets."""

from __future__ import annotations


def url_host(host: str) -> str:
    """``host`` as a URL's host: an IPv6 literal in brackets (``http://[::]:PORT``, not ``http://:::PORT``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
