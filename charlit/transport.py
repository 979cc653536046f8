"""Where an API key may travel: a bearer token over plain http is readable on the way, so charlit sends one over
http only to this machine unless the user says the network path is trusted (``allow_insecure_http``). Used by every
client that carries a key (the LLM judge, the served teacher)."""

from __future__ import annotations

import ipaddress
import urllib.parse

from charlit.loggers import redact_text


def is_local_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_key_transport(
    base_url: str, api_key_env: str | None, allow_insecure_http: bool, prefix: str = "eval.llm_judge"
) -> None:
    """Refuse to send the key in ``$api_key_env`` over plain http to another machine; ``prefix``: the config node
    the settings live in, for the error message."""
    parsed = urllib.parse.urlsplit(base_url)
    if api_key_env and parsed.scheme == "http" and not allow_insecure_http and not is_local_host(parsed.hostname):
        raise ValueError(
            f"{prefix}.base_url={redact_text(base_url)!r} would send the key from ${api_key_env} unencrypted "
            f"to {parsed.hostname}; use https://, or set {prefix}.allow_insecure_http=true if that network "
            f"path is trusted (or {prefix}.api_key_env=null for an endpoint without a key)."
        )
