"""launch.flower_keys: the local deployment's CA, SuperLink certificate and SuperNode keys, read
back the way Flower reads them (OpenSSH EC keys on a NIST curve; a certificate for 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from supermask_cli.launch import flower_keys


def test_keys_are_what_flower_reads_and_are_kept(tmp_path):
    # Execute
    flower_keys.main(str(tmp_path / "keys"), 2)
    keys = tmp_path / "keys"

    # Assert: node keys as flower-supernode and `flwr supernode register` load them
    for i in range(2):
        private = serialization.load_ssh_private_key((keys / f"node_{i}").read_bytes(), None)
        public = serialization.load_ssh_public_key((keys / f"node_{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert public.public_numbers() == private.public_key().public_numbers()
        assert stat.S_IMODE((keys / f"node_{i}").stat().st_mode) == 0o600
    # the SuperLink's certificate: for 127.0.0.1, signed by the CA
    ca = x509.load_pem_x509_certificate((keys / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((keys / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE((keys / "server.key").stat().st_mode) == 0o600

    # Execute again: identities kept
    before = (keys / "node_0").read_bytes()
    flower_keys.main(str(keys), 3)
    assert (keys / "node_0").read_bytes() == before and (keys / "node_2.pub").is_file()
