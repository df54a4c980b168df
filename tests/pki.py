"""A throw-away PKI for the TLS tests: a CA, and node and client certificates it signed (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

FILES = ("ca.pem", "node.pem", "node.key", "client.pem", "client.key")


def make_pki(folder: Path) -> dict[str, Path]:
    """Create `folder` and the CA, node and client keys and certificates in it; name -> path."""
    folder.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")
    for name in ("node", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2")
    return {name: folder / name for name in FILES}
