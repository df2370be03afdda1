"""Building the endpoint connection for a start, on the loop: one adapter of protocols/ per
endpoint protocol. The engine is handed the connection; it never builds one itself."""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio

from dashboard.gateway import wire
from dashboard.repositories.endpoints import Endpoint
from dashboard.services import Services
from engine import Credentials, EndpointConnection, LoopClosed
from engine.access import Profile
from engine.messages import EndpointProtocol, EndpointSpec
from protocols.freerdp import RdpOptions
from protocols.rdp import RdpConnection
from protocols.ssh import SshConnection
from protocols.synthetic import SyntheticConnection
from protocols.vnc import VncConnection

log = logging.getLogger(__name__)


def build_connection(services: Services, endpoint: Endpoint, credentials: Credentials | None,
                     start: wire.Start, term_type: str | None = None,
                     desktop_size: tuple[int, int] | None = None,
                     profile: Profile | None = None) -> EndpointConnection:
    """The endpoint connection for a start, built on the loop. `desktop_size`: the launcher's,
    asked of a VNC server that can resize (None keeps the server's), an RDP desktop's size (None:
    RdpOptions' default). `profile`: the starter's, which says whether an RDP session's client
    may share the clipboard and a folder."""
    spec: EndpointSpec = endpoint.spec
    endpoint_id = spec.id

    def in_the_database(method: Callable[[str, str], Any], what: str) -> Callable[[str], None]:
        def call(key: str) -> None:  # from the connection's task: write in a worker thread
            async def write() -> None:
                try:
                    await trio.to_thread.run_sync(method, endpoint_id, key)
                except Exception:
                    log.exception("recording the %s of endpoint %s", what, endpoint_id)
            try:
                services.bridge.spawn(write)
            except LoopClosed:
                pass
        return call

    if spec.protocol is EndpointProtocol.SYNTHETIC:
        return SyntheticConnection(services.engine.clock, frame_bytes=start.frame_bytes or 64)
    if spec.protocol is EndpointProtocol.SSH:
        assert credentials is not None
        return SshConnection(
            services.bridge, spec.host, spec.port, credentials, known_host_key=endpoint.host_key,
            # first use: trust the key for this endpoint; a changed key: keep it for an administrator
            on_host_key=in_the_database(services.endpoints.trust_first_host_key, "host key"),
            on_host_key_changed=in_the_database(services.endpoints.note_changed_host_key, "changed host key"),
            connect_timeout=services.settings.ssh.connect_timeout_seconds,
            keepalive_interval=services.settings.ssh.keepalive_seconds,
            **({"term_type": term_type} if term_type else {}))
    if spec.protocol is EndpointProtocol.VNC:
        vnc = services.settings.vnc
        return VncConnection(services.bridge, spec.host, spec.port, credentials.password if credentials else None,
                             connect_timeout=vnc.connect_timeout_seconds, quality=vnc.quality,
                             compress=vnc.compress, desktop_size=desktop_size)
    if spec.protocol is EndpointProtocol.RDP:
        default = RdpOptions()
        width, height = desktop_size or (default.width, default.height)
        options = RdpOptions(
            width=width, height=height, connect_timeout=services.settings.rdp.connect_timeout_seconds,
            clipboard=profile is not None and (profile.clipboard_upload or profile.clipboard_download),
            drive=profile is not None and profile.file_transfer)
        # the certificate is pinned as an SSH host key is: first use trusted, a change kept aside
        return RdpConnection(
            services.bridge, spec.host, spec.port, credentials or Credentials(""), options=options,
            known_certificate=endpoint.host_key,
            on_certificate=in_the_database(services.endpoints.trust_first_host_key, "certificate"),
            on_certificate_changed=in_the_database(services.endpoints.note_changed_host_key, "changed certificate"))
    raise ValueError(f"sessions on {spec.protocol.value} endpoints are not available here")
