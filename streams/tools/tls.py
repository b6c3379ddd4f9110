"""TLS for the local secured broker: a local CA and a broker certificate it signed, made once with keytool.

`<broker home>/tls/` holds the CA (`ca.p12`, and `ca.pem` for clients), the brokers' keystore
(`broker.p12`, certificate for 127.0.0.1 and localhost, signed by the CA) and the stores' random
password (`store.password`), all mode 0600. keytool comes with the JDK the broker runs on; the
password reaches it through the environment, never on its command line.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streams.tools.credentials import write_private

VALIDITY_DAYS = 825
_PASSWORD_ENV = "CROSSPATHS_KEYTOOL_PASSWORD"


@dataclass(frozen=True)
class TlsFiles:
    """Where a local broker's TLS material is."""

    folder: Path

    @property
    def ca_pem(self) -> Path:
        """The CA certificate (PEM): what clients trust."""
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The brokers' PKCS12 keystore: their key, and their certificate signed by the CA."""
        return self.folder / "broker.p12"

    @property
    def password_file(self) -> Path:
        return self.folder / "store.password"

    @property
    def exists(self) -> bool:
        """Whether the material was made (TLS, once on, stays on for this broker)."""
        return self.keystore.exists() and self.ca_pem.exists()

    def password(self) -> str:
        """The keystores' password."""
        return self.password_file.read_text().strip()


def ensure_tls(folder: Path) -> TlsFiles:
    """The TLS material in `folder`, made once: a CA, and a broker certificate for 127.0.0.1 it signed."""
    files = TlsFiles(folder)
    if files.exists:
        return files
    keytool = shutil.which("keytool")
    if keytool is None:
        raise RuntimeError("keytool (part of the JDK) was not found on PATH; it makes the local CA for --tls")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(files.password_file, secrets.token_urlsafe(24) + "\n")
    ca_store = folder / "ca.p12"
    for stale in (ca_store, files.keystore):
        stale.unlink(missing_ok=True)
    store = ["-storetype", "PKCS12", "-storepass:env", _PASSWORD_ENV]
    _keytool(files, keytool, "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
             "-dname", "CN=crosspaths local CA", "-ext", "bc:c", "-validity", str(VALIDITY_DAYS),
             "-keystore", str(ca_store), *store)
    ca_pem = _keytool(files, keytool, "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), *store)
    write_private(files.ca_pem, ca_pem)
    _keytool(files, keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
             "-dname", "CN=127.0.0.1", "-validity", str(VALIDITY_DAYS), "-keystore", str(files.keystore), *store)
    request = _keytool(files, keytool, "-certreq", "-alias", "broker", "-keystore", str(files.keystore), *store)
    signed = _keytool(files, keytool, "-gencert", "-alias", "ca", "-keystore", str(ca_store), *store, "-rfc",
                      "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-ext", "EKU=serverAuth,clientAuth",
                      "-validity", str(VALIDITY_DAYS), stdin=request)
    _keytool(files, keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(files.ca_pem),
             "-keystore", str(files.keystore), *store)
    _keytool(files, keytool, "-importcert", "-noprompt", "-alias", "broker", "-keystore", str(files.keystore),
             *store, stdin=signed)
    for made in (ca_store, files.keystore):
        os.chmod(made, 0o600)
    return files


def _keytool(files: TlsFiles, keytool: str, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, _PASSWORD_ENV: files.password()}
    result = subprocess.run([keytool, *args], input=stdin, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"keytool {args[0]} failed: {result.stdout}{result.stderr}")
    return result.stdout
