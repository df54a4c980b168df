"""The pynetdicom receive engine (`node.engine: pynetdicom`): the fallback to the native acceptor.

Follows pynetdicom's ``apps/storescp``: handlers bound to the node's StoreSCP,
the encoded data set taken raw with `event.encoded_dataset()`. Slower than the
native engine (see bench/RESULTS.md), kept so that a site can switch engines
with one key if a peer ever disagrees with the native acceptor.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.ul_server import address_allowed

if TYPE_CHECKING:
    from dicomnode.scp import StoreSCP

logger = logging.getLogger(__name__)


class PynetdicomServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY and a peer-address allow-list."""

    nodelay: bool = True
    networks: list = []

    def get_request(self):  # type: ignore[override]
        client, address = self.socket.accept()
        if self.nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            if not address_allowed(self.networks, address):
                return client, address  # verify_request closes it; no handshake for refused peers
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address

    def verify_request(self, request, client_address) -> bool:  # socketserver hook
        if address_allowed(self.networks, client_address):
            return True
        logger.warning("connection from %s refused: not in security.allowed_peer_addresses", client_address[0])
        return False

    def shutdown_and_wait(self, timeout: float) -> None:
        """Stop accepting; let associations in progress finish (up to `timeout`), then abort them."""
        self.shutdown()  # stops the accept loop and closes the listening socket
        active = list(self.active_associations)
        for assoc in active:
            assoc.join(timeout=timeout / max(1, len(active)))
        for assoc in self.active_associations:
            logger.warning("aborting an association still open at shutdown")
            assoc.abort()


def start_server(scp: StoreSCP) -> PynetdicomServer:
    config = scp.config
    n, sec = config.node, config.security
    ae = AE(ae_title=n.ae_title)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    if not sec.allow_any_calling_aet:
        ae.require_calling_aet = list(sec.allowed_calling_aets)
    ae.require_called_aet = n.require_called_aet
    ae.maximum_associations = n.max_associations
    ae.maximum_pdu_size = n.max_pdu
    ae.acse_timeout = n.acse_timeout_s
    ae.dimse_timeout = n.dimse_timeout_s
    ae.network_timeout = n.network_timeout_s

    def on_store(event: Any) -> int:
        return scp.store(lambda: (b"", event.encoded_dataset()), event.assoc.requestor.ae_title)

    def on_echo(event: Any) -> int:
        return scp.on_echo(event.assoc.requestor.ae_title)

    def on_rejected(event: Any) -> None:
        requestor = event.assoc.requestor
        scp.on_rejected(requestor.ae_title, requestor.address, "refused by the pynetdicom engine (calling or called "
                        "AE, or the association limit)")

    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo), (evt.EVT_REJECTED, on_rejected)]
    server = ae.make_server((n.host, n.port), ssl_context=scp.ssl_context, evt_handlers=handlers,
                            server_class=PynetdicomServer)
    server.nodelay = n.tcp_nodelay
    server.networks = scp.networks
    ae._servers.append(server)
    return server
