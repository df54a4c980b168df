#!/opt/nodestage/venv/bin/python
"""Container HEALTHCHECK: C-ECHO the running node itself, as its effective config describes it.

Reads the same config as `nodestage serve` ($NODESTAGE_CONFIG, then NODESTAGE__ overrides), so
the node's AE title and port are the ones it listens on. The calling AE must pass the node's own
allow-list, so it is chosen from that list: $NODESTAGE_HEALTHCHECK_AET if set, else HEALTHCHECK
when the node accepts it (listed, or allow_any_calling_aet), else the first allowed AE.
With TLS enabled it connects with the node's own certificate and CA (security.tls). If
security.allowed_peer_addresses is set, it must include 127.0.0.1 (the check runs in the container).
Exit 0 when the node answers the C-ECHO with success, 1 otherwise (Docker/podman health states).
"""

from __future__ import annotations

import os
import sys

from dicomnode.app.config import ConfigError, NodeConfig, load_config
from dicomnode.send.scu import client_ssl_context, echo

HEALTHCHECK_AET = "HEALTHCHECK"
DEFAULT_CONFIG = "/etc/nodestage/config.yaml"
ANY_ADDRESS = ("0.0.0.0", "::", "")


def calling_aet(config: NodeConfig) -> str:
    """An AE title the node's allow-list accepts (see the module docstring)."""
    explicit = os.environ.get("NODESTAGE_HEALTHCHECK_AET")
    if explicit:
        return explicit
    allowed = config.security.allowed_calling_aets
    if config.security.allow_any_calling_aet or HEALTHCHECK_AET in allowed or not allowed:
        return HEALTHCHECK_AET
    return allowed[0]


def main() -> int:
    try:
        config = load_config(os.environ.get("NODESTAGE_CONFIG") or DEFAULT_CONFIG)
    except ConfigError as err:
        sys.stdout.write(f"unhealthy: {err}\n")
        return 1
    host = "127.0.0.1" if config.node.host in ANY_ADDRESS else config.node.host
    aet = calling_aet(config)
    # with TLS on the port, the check connects as a peer would: the node's own certificate and CA
    ssl_context = client_ssl_context(config) if config.security.tls.enabled else None
    result = echo(config.node.ae_title, host, config.node.port, aet, config.send, ssl_context)
    state = "healthy" if result.ok else "unhealthy"
    sys.stdout.write(f"{state}: C-ECHO {aet} -> {config.node.ae_title}@{host}:{config.node.port}: "
                     f"{result.detail} ({result.seconds:.2f} s)\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
