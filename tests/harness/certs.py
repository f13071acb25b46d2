"""A private certificate authority for the TLS tests (PostgreSQL's and Kafka's): CAs, certificates they sign,
PEM files. Everything is made with `cryptography`, valid for a day, EC P-256."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["LOOPBACK", "ca", "pem", "signed", "write_key"]

LOOPBACK = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))  # the only name the servers' certificates carry


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)))


def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(cn, _name(cn), key).add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                                       critical=True).sign(key, hashes.SHA256()))
    return key, cert


def signed(subject: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
           san: x509.GeneralName | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for `subject` that the CA signed, naming `san` when given."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(subject, ca_cert.subject, key)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> None:
    """The key as PKCS#8 PEM, encrypted with `password` when given."""
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
