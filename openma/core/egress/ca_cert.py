"""The egress CA certificate's shape, written once: a P-256 CA that may sign leaf certificates only (path
length 0), self-signed, with its key usages and subject key identifier. The platform's derived CA
(:func:`openma.core.egress.service.derive_ca`) and a generated one (:meth:`openma.adapters.egress.EgressCA.generate`)
both build on it."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


def ca_certificate_builder(
    name: x509.Name,
    public: ec.EllipticCurvePublicKey,
    serial: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    """An unsigned self-issued CA certificate for ``public`` named ``name`` (sign it with its private key)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
