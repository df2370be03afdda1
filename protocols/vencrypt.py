"""VeNCrypt 0.2 (the RFB security type 19 that TigerVNC offers by default): TLS around VNC
authentication or around nothing, chosen by `protocols.vnc` when the server offers it.
The subtypes are tried in `VENCRYPT_PREFERENCE`'s order. The TLS* ones are anonymous
Diffie-Hellman; the X509* ones use the server's certificate, which is not verified (see below).
Anything refused raises `VencryptRefused`, whose text is written for the user.
"""

from __future__ import annotations

import logging
import ssl
import struct

import trio

from protocols.rfb import Security
from protocols.rfb_decode import RfbReader

log = logging.getLogger(__name__)

_U8 = struct.Struct(">B")


class VencryptRefused(Exception):
    """The server and cosession found no way through VeNCrypt; final (a retry cannot fix it)."""


# VeNCrypt subtypes in the order they are chosen, with the authentication inside the TLS. The
# certificate of the X509 ones is not verified (VNC servers' are self-signed, and there is no
# place yet to pin one), and the TLS* ones have none: TLS here protects against eavesdropping
# (VncAuth alone encrypts nothing), not against a man in the middle.
VENCRYPT_PREFERENCE = ((261, Security.VNC_AUTH), (258, Security.VNC_AUTH),  # X509Vnc, TLSVnc
                       (260, Security.NONE), (257, Security.NONE))  # X509None, TLSNone


def _tls_context(anonymous: bool) -> ssl.SSLContext:
    """VeNCrypt's TLS* subtypes are anonymous Diffie-Hellman (TigerVNC's GnuTLS settles on
    AECDH-AES256-SHA), its X509* ones use the server's certificate. Anonymous suites exist only
    up to TLS 1.2 and at OpenSSL's security level 0; they are offered only for TLS* subtypes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if anonymous:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("aNULL:!eNULL:!RC4:!3DES:!MD5:@SECLEVEL=0")
    return context


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    return getattr(cause, "reason", None) or type(cause).__name__


async def vencrypt(reader: RfbReader, stream: trio.abc.Stream, where: str, has_password: bool,
                   ) -> tuple[trio.abc.Stream, int]:
    """VeNCrypt 0.2: choose TLS (anonymous or with a certificate) around VNC authentication
    (or none); returns the TLS stream and the inner security type."""
    major, minor = await reader.unpack(struct.Struct(">BB"))
    if (major, minor) < (0, 2):
        raise VencryptRefused(f"{where} speaks VeNCrypt {major}.{minor}; cosession needs 0.2")
    await stream.send_all(b"\x00\x02")
    (status,) = await reader.unpack(_U8)
    if status != 0:
        raise VencryptRefused(f"{where} refused VeNCrypt 0.2")
    (count,) = await reader.unpack(_U8)
    subtypes = struct.unpack(f">{count}I", await reader.read(4 * count))
    for subtype, inner in VENCRYPT_PREFERENCE:
        if subtype in subtypes and (inner == Security.NONE or has_password):
            break
    else:
        raise VencryptRefused(f"{where} offers no VeNCrypt subtype cosession supports "
                              f"({', '.join(str(t) for t in subtypes)})")
    await stream.send_all(struct.pack(">I", subtype))
    (accepted,) = await reader.unpack(_U8)
    if accepted != 1:
        raise VencryptRefused(f"{where} declined TLS")
    tls = trio.SSLStream(stream, _tls_context(anonymous=subtype in (257, 258)), server_hostname=None,
                         https_compatible=False)
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        raise VencryptRefused(f"the TLS handshake with {where} failed ({_tls_reason(exc)})") from None
    log.info("vnc %s: VeNCrypt subtype %d, %s %s", where, subtype, tls.version(), tls.cipher()[0])
    return tls, inner

