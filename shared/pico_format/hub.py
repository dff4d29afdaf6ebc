"""Whether the Hugging Face Hub can be reached, asked once and without retries.

The Hub clients (huggingface_hub, datasets, transformers) retry a lost connection for most of a
minute before failing; pico-train and pico-analyze ask this first so an offline machine fails at
once with a one-line error. huggingface_hub is imported only when asked (both packages that use
this depend on it; pico_format itself does not).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

HUB_TIMEOUT_S = 5.0


def hub_unreachable(timeout: float = HUB_TIMEOUT_S) -> tuple[str, OSError] | None:
    """None when the Hub endpoint (``HF_ENDPOINT``, default huggingface.co) accepts a TCP
    connection within `timeout` seconds, or in offline mode (``HF_HUB_OFFLINE=1``, where the
    clients use only the local cache and fail at once by themselves); else (host, the error)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE"):
        return None
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return host, err
    return None
