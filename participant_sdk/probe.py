"""What listens at an address that did not complete a gRPC handshake with us.

A client given the wrong port (a node's Raft port, a participant's, any TCP server)
would otherwise learn nothing better than UNAVAILABLE after its retries, or wait for
gRPC's 20 s connect timeout when the server accepts and stays silent. ``diagnose``
looks at the bytes the peer answers with and names the mistake in one line:

- nothing accepts the connection: a node that is down; not a mistake (None);
- the peer answers an HTTP/2 preface with a SETTINGS frame: plaintext gRPC;
- the peer answers a TLS ClientHello with a handshake or an alert: TLS;
- neither: not a gRPC server at all (a Raft port, an HTTP/1 server, a silent one).

Only called on a failed first contact, so a healthy cluster never sees a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = ["diagnose"]

PROBE_TIMEOUT_S = 2.0
# The client preface of HTTP/2 (RFC 9113, 3.4) and an empty SETTINGS frame; a server
# answers with a SETTINGS frame of its own: 3 bytes length, type 0x4.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x4


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _accepts(host: str, port: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    await _close(writer)
    return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _speaks_h2(host: str, port: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_H2_PREFACE)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            head = await reader.readexactly(9)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        await _close(writer)
    return head[3] == _H2_SETTINGS


async def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    # Only "does it answer in TLS": no certificate is checked or presented here.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLError as error:
        # An alert is TLS talking (no client certificate, say); anything else (the
        # peer closed, or answered with bytes that are no TLS record) is not.
        return "ALERT" in (error.reason or "")
    except (OSError, TimeoutError):
        return False
    await _close(writer)
    return True


async def diagnose(
    address: str, *, tls: bool, refused: bool, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """Why ``address`` did not complete a gRPC handshake with a client that uses TLS
    (``tls``) or not: a one-line problem, or "" when the probe finds nothing wrong
    (the peer speaks what the client speaks), or None when no TCP connection opens
    there (refused or timed out: down, or cut off by the network).
    ``refused``: the handshake failed (rather than being slow): only then is a peer
    that speaks the other kind of transport, or TLS at all, a mistake to name."""
    try:
        host, port = _split(address)
    except ValueError:
        return ""  # a name gRPC resolves itself (dns:///, unix:): nothing to probe here
    if not await _accepts(host, port, timeout_s):
        return None
    # Side by side: a silent peer costs one timeout, not two.
    tls_spoken, h2_spoken = await asyncio.gather(
        _speaks_tls(host, port, timeout_s), _speaks_h2(host, port, timeout_s)
    )
    if tls_spoken and tls and refused:
        return (
            f"{address} speaks TLS but refused this client's certificate, or showed one "
            "this client does not trust (a certificate of another cluster or CA?)"
        )
    if tls_spoken and not tls:
        return (
            f"{address} serves TLS and this client has no certificate "
            "(give it one: tls=, CONCORD_TLS_DIR or CONCORD_TLS_CA/CERT/KEY)"
        )
    if h2_spoken and tls:
        return (
            f"{address} serves plaintext gRPC and this client uses TLS "
            "(a cluster started with --insecure?)"
        )
    if tls_spoken or h2_spoken:
        return ""
    return (
        f"{address} is not a Concord coordinator: it accepts connections but does not "
        "speak gRPC (a node's Raft port instead of its gRPC port?)"
    )
