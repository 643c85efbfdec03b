"""Keys of a local Flower deployment (scripts/flower_local.sh): a CA, the SuperLink's TLS
certificate for 127.0.0.1, and one P-384 key pair per SuperNode in OpenSSH format (what
``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read).

    python -m supermask_cli.launch.flower_keys DIR NUM_NODES

Writes DIR/{ca.crt, server.pem, server.key, node_<i>, node_<i>.pub}; private keys mode 600. Keys
that exist are kept (a restarted deployment keeps its nodes' identities).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAYS = 30


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def tls(directory: str) -> None:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "supermask local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    _write(os.path.join(directory, "ca.crt"), ca.public_bytes(serialization.Encoding.PEM))
    _write(os.path.join(directory, "server.pem"), cert.public_bytes(serialization.Encoding.PEM))
    _write(os.path.join(directory, "server.key"), _pem_key(key), private=True)


def node_key(directory: str, index: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(os.path.join(directory, f"node_{index}"), private, private=True)
    _write(os.path.join(directory, f"node_{index}.pub"), public + f" supermask-node-{index}\n".encode())


def main(directory: str, num_nodes: int) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not all(os.path.exists(os.path.join(directory, n)) for n in ("ca.crt", "server.pem", "server.key")):
        tls(directory)
    for i in range(num_nodes):
        if not os.path.exists(os.path.join(directory, f"node_{i}")):
            node_key(directory, i)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
