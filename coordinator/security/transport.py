"""How every gRPC server port and channel of Concord is made: mutual TLS, or plaintext
only when asked for explicitly.

A ``Transport`` holds this process's certificate, key and the CA it trusts. Servers
require a client certificate from that CA; channels present ours and expect the
server's identity (``identity.server_name``): a coordinator dialling participant
``p1`` accepts only ``p1``'s certificate, a participant dialling the cluster accepts
only certificates of that cluster's nodes. ``Transport.insecure()`` is plaintext with
no identities; whoever builds one is expected to have logged a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordinator.security.certs import CA_CERT, file_stem, identities_in
from coordinator.security.identity import Identity, Role, server_name

__all__ = ["MESSAGE_BYTES_MAX", "Transport", "TransportError"]

log = logging.getLogger(__name__)

# Every server and channel: no message larger (a CoordinatorBatch of entry_batch_max
# messages, a 1 MiB value staged at a participant, with room to spare).
MESSAGE_BYTES_MAX = 8 << 20
_SIZE_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
)


class TransportError(Exception):
    """TLS files that cannot be used: the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Transport:
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    identity: Identity | None = None

    @classmethod
    def insecure(cls) -> Transport:
        return cls()

    @classmethod
    def from_files(
        cls, ca: str | os.PathLike[str], cert: str | os.PathLike[str], key: str | os.PathLike[str]
    ) -> Transport:
        """Load and check: the certificate carries one Concord identity, was signed by
        the CA, and matches the key; the key file is private to its owner."""
        ca_pem, cert_pem, key_pem = _read(ca), _read(cert), _read(key)
        if os.stat(key).st_mode & 0o077:
            raise TransportError(
                f"{key}: a private key must be readable by its owner only (chmod 600 {key})"
            )
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_pem)
            leaf = x509.load_pem_x509_certificate(cert_pem)
            private = serialization.load_pem_private_key(key_pem, None)
        except ValueError as error:
            raise TransportError(f"{cert}, {key} or {ca}: not PEM ({error})") from None
        try:
            leaf.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, Exception) as error:
            raise TransportError(f"{cert} was not issued by the CA in {ca} ({error})") from None
        if private.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TransportError(f"{key} is not the key of {cert}")
        found = identities_in(cert_pem)
        if len(found) != 1:
            raise TransportError(f"{cert} carries {len(found)} Concord identities, not one")
        return cls(ca=ca_pem, cert=cert_pem, key=key_pem, identity=found[0])

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], role: Role, name: str = "") -> Transport:
        """The files ``concord certs init`` wrote for this identity (cluster taken from
        the certificate itself). No ``name``: the one certificate of that role there."""
        base = Path(directory)
        if not base.is_dir():
            raise TransportError(f"TLS directory {base} does not exist")
        candidates = []
        for path in sorted(base.glob(f"{role.value}-*.pem")):
            found = identities_in(path.read_bytes())
            if (
                len(found) == 1
                and found[0].role is role
                and found[0].name == (name or found[0].name)
            ):
                candidates.append(found[0])
        if len(candidates) != 1:
            which = f"{role.value} {name!r}" if name else f"exactly one {role.value}"
            raise TransportError(
                f"{base} holds {len(candidates)} certificates for {which}"
                + (": name the identity to use" if len(candidates) > 1 else "")
            )
        stem = file_stem(candidates[0])
        return cls.from_files(base / CA_CERT, base / f"{stem}.pem", base / f"{stem}.key")

    @classmethod
    def from_env(
        cls, role: Role, name: str, environ: Mapping[str, str] = os.environ
    ) -> Transport | None:
        """From the environment: ``CONCORD_TLS_CA``, ``CONCORD_TLS_CERT`` and
        ``CONCORD_TLS_KEY`` (files), or ``CONCORD_TLS_DIR`` (a directory made by
        ``concord certs``, holding this identity). None when neither is set."""
        files = [environ.get(f"CONCORD_TLS_{part}", "") for part in ("CA", "CERT", "KEY")]
        if any(files):
            if not all(files):
                raise TransportError(
                    "set all of CONCORD_TLS_CA, CONCORD_TLS_CERT and CONCORD_TLS_KEY, or none"
                )
            return cls.from_files(*files)
        directory = environ.get("CONCORD_TLS_DIR", "")
        if directory:
            return cls.from_dir(directory, role, name)
        return None

    @classmethod
    def resolve(cls, tls: Transport | None, role: Role, name: str, what: str) -> Transport:
        """``tls`` if given, else the environment's, else plaintext with a warning."""
        if tls is not None:
            return tls
        found = cls.from_env(role, name)
        if found is not None:
            return found
        log.warning(
            "%s runs without TLS: no certificate given (tls=, CONCORD_TLS_DIR or "
            "CONCORD_TLS_CA/CERT/KEY); a cluster that uses TLS will refuse it",
            what,
        )
        return cls.insecure()

    @property
    def not_after_ms(self) -> int:
        """When this certificate expires (ms since the epoch); 0 without one."""
        if self.cert is None:
            return 0
        expiry = x509.load_pem_x509_certificate(self.cert).not_valid_after_utc
        return int(expiry.timestamp() * 1000)

    @property
    def secure(self) -> bool:
        return self.identity is not None

    @property
    def cluster(self) -> str:
        return "" if self.identity is None else self.identity.cluster

    # ------------------------------------------------------------ servers

    def server_options(self) -> list[tuple[str, Any]]:
        return list(_SIZE_OPTIONS)

    def add_port(self, server: Any, address: str) -> int:
        """Listen on ``address`` (a grpc or grpc.aio server); the bound port."""
        if self.identity is None:
            port: int = server.add_insecure_port(address)
        else:
            assert self.key is not None and self.cert is not None
            credentials = grpc.ssl_server_credentials(
                [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
            )
            port = server.add_secure_port(address, credentials)
        if port == 0:
            raise TransportError(f"cannot listen on {address}")
        return port

    # ------------------------------------------------------------ channels

    def _options(self, to: Role, name: str, extra: Sequence[tuple[str, Any]]) -> list[Any]:
        options = [*_SIZE_OPTIONS, *extra]
        if self.identity is not None:
            expected = server_name(self.identity.cluster, to, name)
            options.append(("grpc.ssl_target_name_override", expected))
        return options

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def aio_channel(
        self, address: str, *, to: Role, name: str = "", options: Sequence[Any] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``address``, which must prove it is ``to`` (``name``:
        the participant id, for a participant)."""
        opts = self._options(to, name, options)
        if self.identity is None:
            return grpc.aio.insecure_channel(address, options=opts)
        return grpc.aio.secure_channel(address, self._credentials(), options=opts)

    def channel(
        self, address: str, *, to: Role, name: str = "", options: Sequence[Any] = ()
    ) -> grpc.Channel:
        """The same, blocking."""
        opts = self._options(to, name, options)
        if self.identity is None:
            return grpc.insecure_channel(address, options=opts)
        return grpc.secure_channel(address, self._credentials(), options=opts)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TransportError(f"{path}: {error.strerror}") from None
