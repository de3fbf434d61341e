"""The egress proxy's certificate authority: one per platform, leaf certificates minted per host on demand.

The CA is an EC P-256 key with a self-signed certificate (``cryptography``). The proxy terminates a
sandbox's TLS with a leaf certificate for the requested host (a DNS or IP subject alternative name), signed
by this CA, which the sandbox trusts (``SSL_CERT_FILE`` and friends). Leaves and their server
``ssl.SSLContext`` are cached in a bounded LRU. The private key never appears in a repr.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openma.core.egress.ca_cert import ca_certificate_builder
from openma.errors import InvalidInput

CA_DAYS: Final = 3650
LEAF_DAYS: Final = 30
CACHE_SIZE: Final = 512


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openma"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class EgressCA:
    """A CA that mints per-host leaf certificates: ``generate()`` a new one, or ``from_pem(cert, key)``."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *, cache_size: int = CACHE_SIZE):
        self._cert = cert
        self._key = key
        self._cache_size = cache_size
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def generate(cls, common_name: str = "openma egress CA") -> EgressCA:
        """A new CA with a fresh P-256 key, valid for ten years."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = ca_certificate_builder(
            _name(common_name),
            key.public_key(),
            x509.random_serial_number(),
            now - datetime.timedelta(hours=1),
            now + datetime.timedelta(days=CA_DAYS),
        ).sign(key, hashes.SHA256())
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: str | bytes, key_pem: str | bytes) -> EgressCA:
        """A CA from its PEM certificate and (unencrypted PKCS#8 or traditional) PEM private key."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
            key = serialization.load_pem_private_key(
                key_pem.encode() if isinstance(key_pem, str) else key_pem, password=None
            )
        except (ValueError, TypeError):
            raise InvalidInput("the egress CA certificate or key is not valid PEM", field="egress_ca") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput("the egress CA key must be an EC key", field="egress_ca")
        if cert.public_key() != key.public_key():
            raise InvalidInput("the egress CA key does not match its certificate", field="egress_ca")
        return cls(cert, key)

    @property
    def cert_pem(self) -> str:
        """The CA certificate (PEM): what sandboxes trust."""
        return self._cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def key_pem(self) -> str:
        """The CA private key (PKCS#8 PEM): store it sealed; it never appears in a repr."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    def leaf(self, host: str) -> tuple[str, str]:
        """A fresh ``(cert_pem, key_pem)`` for ``host`` (a normalised DNS name or IP literal), signed by the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host[:64]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server ``SSLContext`` presenting a leaf for ``host`` (HTTP/1.1 by ALPN); cached, LRU-bounded."""
        with self._lock:
            context = self._contexts.get(host)
            if context is not None:
                self._contexts.move_to_end(host)
                return context
        cert_pem, key_pem = self.leaf(host)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.set_alpn_protocols(["http/1.1"])
        # load_cert_chain reads files only: write the pair to a private temporary file and remove it at once.
        fd, path = tempfile.mkstemp(prefix="openma-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(key_pem + cert_pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        with self._lock:
            self._contexts[host] = context
            self._contexts.move_to_end(host)
            while len(self._contexts) > self._cache_size:
                self._contexts.popitem(last=False)
        return context

    def cached_hosts(self) -> tuple[str, ...]:
        """The hosts whose server context is cached, least recently used first."""
        with self._lock:
            return tuple(self._contexts)

    def __repr__(self) -> str:
        return f"EgressCA(subject={self._cert.subject.rfc4514_string()!r}, key=<redacted>)"


__all__ = ["EgressCA"]
