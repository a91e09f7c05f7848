"""Fast reachability checks, so a hub that cannot be reached fails in seconds instead of after minutes of retries."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request


def unreachable_reason(url: str, *, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to `url`'s host (or to the proxy that serves it) opens within `timeout` seconds,
    else a short reason ("cannot resolve huggingface.co", "connection to 127.0.0.1:9 refused", ...)."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    via = ""
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        via = f" through proxy {proxied.hostname}:{proxied.port or 80}"
        host, port = proxied.hostname or "", proxied.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve {host}{via} (no network or no DNS)"
    except socket.timeout:
        return f"no answer from {host}:{port}{via} within {timeout:g} s"
    except ConnectionRefusedError:
        return f"connection to {host}:{port}{via} refused"
    except OSError as err:
        return f"cannot connect to {host}:{port}{via}: {err.strerror or err}"
