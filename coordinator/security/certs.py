"""Certificates: a development CA and one certificate per identity (``concord certs``).

``init`` makes a self-signed CA (``ca.pem``, ``ca.key``) and, for every identity asked
for, ``ROLE-NAME.pem`` and ``ROLE-NAME.key`` in one directory: keys are ECDSA P-256,
written with mode 0600 in a directory of mode 0700. A certificate carries its identity
as a URI SAN and, for servers, the DNS name clients expect (``identity.server_name``).
``issue`` adds one more identity to an existing directory (a new participant, a new
node), ``check`` reports what a directory holds and when each certificate expires.

In production, issue the same names from your own CA: what Concord checks is the chain
to the CA file it is given and the identity in the URI SAN.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.security.identity import Identity, IdentityError, Role, server_name

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertError",
    "CertInfo",
    "Issued",
    "describe",
    "file_stem",
    "identities_in",
    "init_dir",
    "issue",
    "peer_identity",
]

CA_CERT, CA_KEY = "ca.pem", "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity browsers accept: a habit worth keeping


class CertError(Exception):
    """A certificate directory or file that cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class Issued:
    identity: Identity
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CertInfo:
    path: Path
    identity: Identity | None
    subject: str
    not_after: dt.datetime


def file_stem(identity: Identity) -> str:
    return f"{identity.role.value}-{quote(identity.name, safe='')}"


def identities_in(pem: bytes) -> list[Identity]:
    """The Concord identities in a certificate's URI SANs (normally exactly one)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    found = []
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            found.append(Identity.parse(uri))
        except IdentityError:
            continue
    return found


def peer_identity(auth_context: dict[str, Any]) -> Identity | None:
    """The identity in the verified client certificate of a gRPC call (``context.
    auth_context()``), or None when the call carries none (plaintext, or a certificate
    without exactly one Concord identity)."""
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1:
        return None
    return _identity_of(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _identity_of(pem: bytes) -> Identity | None:
    """Parsed once per certificate, not per call (a handful of peers make every call)."""
    found = identities_in(pem)
    return found[0] if len(found) == 1 else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Created with mode 0600 from the start (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_dir(directory: Path, cluster: str, identities: Iterable[Identity]) -> list[Issued]:
    """A new CA and certificates in ``directory``, which must not hold a CA already."""
    if (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        raise CertError(
            f"{directory} already holds a CA ({CA_CERT}); use 'concord certs issue' to add "
            "an identity to it, or choose another directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Concord CA {cluster}")])
    now = _now()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / CA_KEY, _key_pem(key))
    return [issue(directory, identity) for identity in identities]


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as error:
        raise CertError(f"{directory} holds no CA ({error.filename} is missing)") from None
    except ValueError as error:
        raise CertError(f"{directory}: the CA files cannot be read ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / CA_KEY} is not an ECDSA key")
    return cert, key


def issue(directory: Path, identity: Identity, days: int = LEAF_DAYS) -> Issued:
    """A certificate for ``identity`` signed by the CA in ``directory``."""
    ca, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role in (Role.NODE, Role.PARTICIPANT):
        # A server too: the name clients verify, plus loopback for tools that dial by
        # address (grpcurl, health checks).
        sans += [
            x509.DNSName(server_name(identity.cluster, identity.role, identity.name)),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    now = _now()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{identity.role.value} {identity.name}"[:64])]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = file_stem(identity)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))
    return Issued(identity, cert_path, key_path)


def describe(directory: Path) -> list[CertInfo]:
    """Every certificate in ``directory``: its identity and expiry."""
    infos = []
    for path in sorted(directory.glob("*.pem")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError as error:
            raise CertError(f"{path} is not a PEM certificate ({error})") from None
        found = identities_in(path.read_bytes())
        infos.append(
            CertInfo(
                path=path,
                identity=found[0] if len(found) == 1 else None,
                subject=cert.subject.rfc4514_string(),
                not_after=cert.not_valid_after_utc,
            )
        )
    return infos
