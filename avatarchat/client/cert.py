"""`avatar-chat cert`: a self-signed certificate for serving HTTPS on a LAN.

Browsers give a page the microphone only over HTTPS (or on localhost). This writes ``cert.pem`` and
``key.pem`` (the key readable only by you) for the given host names and IP addresses, plus
127.0.0.1 and localhost, and prints the two ``http_options`` lines for serve_config.yaml::

    avatar-chat cert --host 192.168.1.20 --host avatar.lan --out certs/
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

ALWAYS = ("127.0.0.1", "localhost")


def subject_alt_names(hosts: list[str]) -> list:
    """The SAN entries: IP addresses as IPAddress, everything else as DNSName; no duplicates."""
    from cryptography import x509

    names, seen = [], set()
    for host in [*hosts, *ALWAYS]:
        host = host.strip()
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_self_signed(hosts: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a new self-signed EC P-256 certificate for ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    common_name = (hosts or ["localhost"])[0]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "avatar-chat (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
            # A leaf, not a CA: Firefox refuses a CA certificate used as a server's own.
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(out: Path, hosts: list[str], days: int = 365, force: bool = False) -> tuple[Path, Path]:
    """Write ``out/cert.pem`` and ``out/key.pem`` (mode 0600). Refuses to overwrite unless ``force``."""
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = (out / "cert.pem").resolve(), (out / "key.pem").resolve()
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{' and '.join(map(str, existing))} already exist(s); "
                              "pass --force to replace it, or choose another --out")
    cert_pem, key_pem = make_self_signed(hosts, days)
    key_path.unlink(missing_ok=True)  # created afresh below, never readable by others
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)  # whatever the umask
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def cmd_cert(args) -> int:
    import sys

    if args.days <= 0:
        print("error: --days must be positive", file=sys.stderr)
        return 2
    try:
        cert_path, key_path = write_pair(Path(args.out), args.host, args.days, args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    names = ", ".join(str(n.value) for n in subject_alt_names(args.host))
    print(f"wrote {cert_path} and {key_path} (self-signed, {args.days} days, for {names})", file=sys.stderr)
    print("add to serve_config.yaml, under http_options (and set host: 0.0.0.0 or the LAN address):",
          file=sys.stderr)
    print(f"  ssl_certfile: {cert_path}")
    print(f"  ssl_keyfile: {key_path}")
    return 0


def add_parser(sub) -> None:
    cert = sub.add_parser("cert", help="make a self-signed HTTPS certificate for a LAN (see docs/deployment.md)",
                          description=__doc__.split("::")[0].strip())
    cert.add_argument("--host", action="append", required=True,
                      help="a host name or IP address the browser will use (repeat for more); "
                           "127.0.0.1 and localhost are always included")
    cert.add_argument("--out", default="certs", help="directory for cert.pem and key.pem (default certs/)")
    cert.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    cert.add_argument("--force", action="store_true", help="replace existing cert.pem/key.pem")
    cert.set_defaults(func=cmd_cert)
