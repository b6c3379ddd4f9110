"""SCRAM credentials of a local secured broker: passwords made once, and a client file per principal.

The passwords live in `<broker home>/credentials.json` and each principal's Kafka client properties
in `<broker home>/clients/<principal>.properties`, all readable by their owner only (mode 0600, in
0700 folders). The broker learns them when its storage is formatted, as salted SCRAM hashes: the
passwords themselves never appear on a command line.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from streams.clients import ClientAuth, auth_from_properties, format_properties, read_properties
from streams.principals import PRINCIPALS

MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 8192  # Kafka's default for SCRAM-SHA-512 (and its minimum, 4096, for SHA-256 and SHA-512)
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only (0600), in a 0700 folder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode on open: set it
        f.write(text)


def ensure_passwords(path: Path, principals: tuple[str, ...] = PRINCIPALS) -> dict[str, str]:
    """The principals' passwords kept at `path`; random ones (256 bits) made once for any missing."""
    known = json.loads(path.read_text()) if path.exists() else {}
    missing = [p for p in principals if p not in known]
    if missing:
        known.update({p: secrets.token_urlsafe(32) for p in missing})
        write_private(path, json.dumps(known, indent=2) + "\n")
    return {p: known[p] for p in principals}


def scram_salted(password: str, salt: bytes, iterations: int = ITERATIONS, mechanism: str = MECHANISM) -> bytes:
    """SCRAM's SaltedPassword (RFC 5802: Hi(password, salt, i), i.e. PBKDF2-HMAC) as Kafka stores it."""
    return hashlib.pbkdf2_hmac(_HASHES[mechanism], password.encode(), salt, iterations)


def scram_format_argument(name: str, password: str, salt: bytes | None = None) -> str:
    """The `kafka-storage format --add-scram` value for one user, as a salted hash (no clear password)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = scram_salted(password, salt)
    return (f'{MECHANISM}=[name={name},iterations={ITERATIONS},salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"]')


def write_client_files(folder: Path, passwords: dict[str, str], bootstrap: str, protocol: str = "SASL_PLAINTEXT",
                       ssl_cafile: Path | None = None) -> list[Path]:
    """`<folder>/<principal>.properties` for each principal (mode 0600), ready to hand to that party.

    protocol SASL_SSL: the files trust `ssl_cafile` (PEM), the CA of the brokers' certificates.
    """
    written = []
    for name, password in passwords.items():
        auth = ClientAuth(protocol=protocol, mechanism=MECHANISM, username=name, password=password,
                          ssl_cafile=ssl_cafile)
        path = folder / f"{name}.properties"
        write_private(path, format_properties(auth, bootstrap, comment=(
            f"Crosspaths principal '{name}' (streams/principals.py). Readable by its owner only: it holds a password.\n"
            f"Crosspaths commands: export CROSSPATHS_CLIENT_PROPERTIES={path}")))
        written.append(path)
    return written


def rotate_password(admin, credentials: Path, clients: Path, principal: str) -> Path:
    """Give `principal` a new random password: on the cluster (through `admin`), in `credentials` and its client file.

    Connections made with the old password stay until they reconnect; the party needs its new file.
    The admin is refused: it is also the brokers' own login between them (server.properties), which
    a running cluster cannot change.
    """
    from kafka.admin import UserScramCredentialUpsertion

    if principal == "admin":
        raise ValueError("principal='admin' is the brokers' inter-broker login too: it cannot be rotated on a "
                         "running broker (stop it, edit credentials.json and reformat, or use kafka-configs)")
    known = json.loads(credentials.read_text())
    if principal not in known or principal not in PRINCIPALS:
        raise ValueError(f"principal={principal!r} is not one of this broker's: {', '.join(p for p in PRINCIPALS)}")
    password = secrets.token_urlsafe(32)
    errors = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(principal, MECHANISM, password, iterations=ITERATIONS)])
    failed = {user: error for user, error in (errors or {}).items() if error}
    if failed:
        raise RuntimeError(f"the cluster refused the new password of {principal}: {failed}")
    write_private(credentials, json.dumps({**known, principal: password}, indent=2) + "\n")
    props = read_properties(clients / f"{principal}.properties")
    current = auth_from_properties(props)
    return write_client_files(clients, {principal: password}, props["bootstrap.servers"], current.protocol,
                              current.ssl_cafile)[0]
