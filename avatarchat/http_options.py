"""Checks of a Serve config's ``http_options`` that Serve itself leaves to the first request:
HTTPS (``ssl_certfile`` + ``ssl_keyfile``, served by Serve's own proxy) and the plain-http warning.

Browsers give a page the microphone only over HTTPS or on localhost; docs/deployment.md ("HTTPS on a
LAN") shows how to make a certificate (``avatar-chat cert``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from avatarchat.access import is_loopback
from avatarchat.errors import ConfigError

PAIR = "both ssl_certfile and ssl_keyfile, or neither"


def _readable_file(source: str, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(source, key, f"must be a file path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(source, key, f"no such file: {value} (relative paths are from {Path.cwd()}; "
                                       "prefer an absolute path)")
    if not os.access(path, os.R_OK):
        raise ConfigError(source, key, f"file is not readable by this user: {value}")
    return path


def check_tls(source: str, http_options: dict) -> Path | None:
    """Validate the HTTPS keys; returns the certificate's path when HTTPS is on, else None."""
    cert, key = http_options.get("ssl_certfile"), http_options.get("ssl_keyfile")
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = ("ssl_certfile", "ssl_keyfile") if cert else ("ssl_keyfile", "ssl_certfile")
        raise ConfigError(source, f"http_options.{missing}",
                          f"missing, but http_options.{given} is set; allowed: {PAIR}")
    cert_path = _readable_file(source, "http_options.ssl_certfile", cert)
    key_path = _readable_file(source, "http_options.ssl_keyfile", key)
    password = http_options.get("ssl_keyfile_password")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=password)
    except (ssl.SSLError, ValueError, OSError) as err:
        raise ConfigError(source, "http_options.ssl_keyfile",
                          f"{key} and {cert} do not load as a certificate and its private key "
                          f"({err}); allowed: a PEM certificate and the PEM key it was made with") from None
    return cert_path


def bind_host(http_options: dict | None) -> str:
    """The address Serve's proxy binds for these ``http_options`` (Serve's default: 127.0.0.1)."""
    return str((http_options or {}).get("host") or "127.0.0.1")


def plain_http_warning(http_options: dict) -> str | None:
    """A warning when the service is reachable off this machine over plain http."""
    host = bind_host(http_options)
    if is_loopback(host) or http_options.get("ssl_certfile"):
        return None
    return (f"http_options.host is {host} without ssl_certfile/ssl_keyfile: browsers on other machines "
            "will not give the page their microphone over plain http (typing still works); "
            "see docs/deployment.md, 'HTTPS on a LAN'")


def check_http_options(source: str, doc: Any) -> tuple[Path | None, list[str]]:
    """Check a whole Serve config document's ``http_options``: (certificate path or None, warnings)."""
    options = doc.get("http_options") if isinstance(doc, dict) else None
    if options is None:
        return None, []
    if not isinstance(options, dict):
        raise ConfigError(source, "http_options", f"must be a mapping, got {type(options).__name__}")
    cert = check_tls(source, options)
    warning = plain_http_warning(options)
    return cert, [warning] if warning else []
