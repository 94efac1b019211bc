"""A private certificate authority for the local stack: server and client certificates as PEM files.

Redis (tls-port), Kafka (an SSL or SASL_SSL listener) and Kask (HTTPS) of the
local stack all take PEM files signed by one throwaway CA, so a test can give
every client the same CA file. Keys are EC P-256, unencrypted PKCS#8, and
readable only by the owner (mode 0600). The ``cryptography`` package makes the
files when it is installed, else the ``openssl`` command does.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from devstack.process import LOOPBACK, StackError, run_checked

DEFAULT_HOSTS = (LOOPBACK, "localhost")
DEFAULT_VALID_DAYS = 30
CA_COMMON_NAME = "echoseen devstack CA"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a private CA and of a server certificate signed by it (key unencrypted, PKCS#8).

    ``ca_key_path`` is the CA's private key, which make_client_certificate
    signs further certificates with; None for files made elsewhere.
    """

    ca_cert_path: Path
    cert_path: Path
    key_path: Path
    ca_key_path: Path | None = None


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key (PEM), signed by a TlsFiles CA."""

    cert_path: Path
    key_path: Path


def make_tls_files(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS,
                   valid_days: int = DEFAULT_VALID_DAYS) -> TlsFiles:
    """Create a private CA and a server certificate for ``hosts`` in ``directory``, replacing older files.

    The first host is the certificate's common name, and every host becomes a
    subjectAltName (IP or DNS). The files are ca.crt, ca.key, server.crt and server.key.
    """
    if not hosts:
        raise ValueError("hosts must name at least one IP address or DNS name for the server certificate")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert_path=directory / "ca.crt",
        cert_path=directory / "server.crt",
        key_path=directory / "server.key",
        ca_key_path=directory / "ca.key",
    )
    backend = _backend()
    backend.make_ca(files.ca_cert_path, files.ca_key_path, valid_days)
    backend.issue(files, CertificateFiles(files.cert_path, files.key_path), hosts[0], list(hosts), valid_days)
    return files


def make_client_certificate(files: TlsFiles, common_name: str = "echoseen-client",
                            directory: Path | None = None, valid_days: int = DEFAULT_VALID_DAYS) -> CertificateFiles:
    """Sign a client certificate (extendedKeyUsage clientAuth) with the CA of ``files``.

    The files are <common_name>.crt and <common_name>.key in ``directory``
    (default: the CA's directory), replacing older ones.
    """
    if files.ca_key_path is None or not files.ca_key_path.is_file():
        raise StackError(f"the CA key of {files.ca_cert_path} is unknown or missing; "
                         "make the CA with make_tls_files so its key is kept")
    if not common_name or "/" in common_name:
        raise ValueError(f"common_name {common_name!r} must be non-empty and contain no '/': it names the files")
    directory = Path(directory).resolve() if directory is not None else files.ca_cert_path.parent
    directory.mkdir(parents=True, exist_ok=True)
    client = CertificateFiles(directory / f"{common_name}.crt", directory / f"{common_name}.key")
    _backend().issue(files, client, common_name, [], valid_days)
    return client


def write_pem_keystore(files: TlsFiles, path: Path) -> Path:
    """Write the server key, its certificate and the CA certificate into one PEM file (mode 0600).

    This is the layout Kafka reads with ``ssl.keystore.type=PEM`` and
    ``ssl.keystore.location``: the private key followed by the certificate chain.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [files.key_path.read_text(), files.cert_path.read_text(), files.ca_cert_path.read_text()]
    path.write_text("".join(part if part.endswith("\n") else part + "\n" for part in parts))
    path.chmod(0o600)
    return path


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _backend() -> "_CryptographyBackend | _OpensslBackend":
    try:
        import cryptography  # noqa: F401 - only checks that the package is installed
    except ImportError:
        if shutil.which("openssl") is None:
            raise StackError(
                "making TLS files needs the Python package cryptography or the openssl command; "
                "install one (apt-get install -y openssl)"
            ) from None
        return _OpensslBackend()
    return _CryptographyBackend()


class _CryptographyBackend:
    """Makes the files with the ``cryptography`` package."""

    def make_ca(self, cert_path: Path, key_path: Path, valid_days: int) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        not_before, not_after = _validity(valid_days)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, self._private_pem(ca_key))
        cert_path.write_bytes(self._public_pem(ca_cert))

    def issue(self, ca: TlsFiles, leaf: CertificateFiles, common_name: str, hosts: list[str],
              valid_days: int) -> None:
        """Sign a leaf certificate: server and client use when ``hosts`` is given, client use only without."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_key = serialization.load_pem_private_key(ca.ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca.ca_cert_path.read_bytes())
        not_before, not_after = _validity(valid_days)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if hosts:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if hosts:
            alt_names = [x509.IPAddress(ipaddress.ip_address(host)) if is_ip_address(host) else x509.DNSName(host)
                         for host in hosts]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(leaf.key_path, self._private_pem(key))
        leaf.cert_path.write_bytes(self._public_pem(cert))

    @staticmethod
    def _private_pem(key) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    @staticmethod
    def _public_pem(cert) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)


class _OpensslBackend:
    """Makes the files with the openssl command, with its own configuration files.

    Own configuration files keep the system's openssl.cnf from adding or duplicating extensions.
    """

    KEY_OPTIONS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")

    def __init__(self) -> None:
        self.openssl = shutil.which("openssl")

    def make_ca(self, cert_path: Path, key_path: Path, valid_days: int) -> None:
        config_path = cert_path.with_suffix(".cnf")
        config_path.write_text(
            "[req]\n"
            "prompt = no\n"
            "distinguished_name = ca_name\n"
            "x509_extensions = ca_extensions\n"
            "[ca_name]\n"
            f"CN = {CA_COMMON_NAME}\n"
            "[ca_extensions]\n"
            "basicConstraints = critical,CA:TRUE,pathlen:0\n"
            "keyUsage = critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier = hash\n"
        )
        run_checked(
            [self.openssl, "req", "-x509", "-config", str(config_path), *self.KEY_OPTIONS,
             "-keyout", str(key_path), "-out", str(cert_path), "-days", str(valid_days)],
            "openssl: create the CA certificate",
        )
        key_path.chmod(0o600)

    def issue(self, ca: TlsFiles, leaf: CertificateFiles, common_name: str, hosts: list[str],
              valid_days: int) -> None:
        """Sign a leaf certificate: server and client use when ``hosts`` is given, client use only without."""
        config_path = leaf.cert_path.with_suffix(".cnf")
        lines = [
            "[req]",
            "prompt = no",
            "distinguished_name = leaf_name",
            "[leaf_name]",
            f"CN = {common_name}",
            "[leaf_extensions]",
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature",
            f"extendedKeyUsage = {'serverAuth,clientAuth' if hosts else 'clientAuth'}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if hosts:
            alt_names = ",".join(f"IP:{host}" if is_ip_address(host) else f"DNS:{host}" for host in hosts)
            lines.append(f"subjectAltName = {alt_names}")
        config_path.write_text("\n".join(lines) + "\n")
        request_path = leaf.cert_path.with_suffix(".csr")

        run_checked(
            [self.openssl, "req", "-new", "-config", str(config_path), *self.KEY_OPTIONS,
             "-keyout", str(leaf.key_path), "-out", str(request_path)],
            f"openssl: create the certificate request of {common_name}",
        )
        leaf.key_path.chmod(0o600)
        run_checked(
            [self.openssl, "x509", "-req", "-in", str(request_path),
             "-CA", str(ca.ca_cert_path), "-CAkey", str(ca.ca_key_path),
             "-set_serial", str(secrets.randbits(63)), "-days", str(valid_days), "-sha256",
             "-extfile", str(config_path), "-extensions", "leaf_extensions",
             "-out", str(leaf.cert_path)],
            f"openssl: sign the certificate of {common_name}",
        )
        request_path.unlink()


def _validity(valid_days: int) -> tuple[datetime, datetime]:
    # Backdated a minute, so a certificate used at once is valid despite small clock differences.
    not_before = datetime.now(timezone.utc) - timedelta(minutes=1)
    return not_before, not_before + timedelta(days=valid_days)


def _write_private(path: Path, pem: bytes) -> None:
    path.write_bytes(pem)
    path.chmod(0o600)
