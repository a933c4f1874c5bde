"""Users' SSH public keys: what is accepted, what is refused (and that no refusal echoes its
input), and fingerprints that agree with ``ssh-keygen -l``."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest

from jitvault.crypto import normalize_fingerprint, parse_public_key, ssh_fingerprint
from jitvault.errors import ValidationError


def _keygen(tmp: Path, name: str, *args: str) -> Path:
    path = tmp / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", f"{name}@laptop", "-f", str(path), *args],
        check=True,
        capture_output=True,
    )
    return path


def _ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _refused(text: str, *words: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse_public_key(text)
    said = f"{caught.value.message} {caught.value.hint or ''}"
    for word in words:
        assert word in said, said
    return caught.value


def _never_echoes(error: ValidationError, text: str) -> None:
    said = f"{error.message} {error.hint or ''}"
    for chunk in text.split():
        if len(chunk) >= 12:  # key material, not a word of the message
            assert chunk not in said


@pytest.mark.parametrize(
    "args",
    [
        ("-t", "ed25519"),
        ("-t", "ecdsa", "-b", "256"),
        ("-t", "ecdsa", "-b", "384"),
        ("-t", "ecdsa", "-b", "521"),
        ("-t", "rsa", "-b", "2048"),
        ("-t", "rsa", "-b", "3072"),
    ],
    ids=lambda a: "-".join(a[1::2]),
)
def test_ssh_keygen_public_keys_are_accepted_with_ssh_keygens_own_fingerprint(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    key = _keygen(tmp_path, "id", *args)
    pub = key.with_suffix(".pub")
    line = pub.read_text()
    parsed = parse_public_key(line)
    assert parsed.fingerprint == _ssh_keygen_fingerprint(pub)
    assert parsed.comment == "id@laptop"
    assert parsed.line == " ".join(line.split()[:2])
    assert parsed.algorithm == line.split()[0]
    assert parse_public_key(line, comment="work laptop").comment == "work laptop"


def test_a_fido_security_key_line_is_accepted_and_fingerprinted_over_its_whole_blob() -> None:
    blob = _sshstr(b"sk-ssh-ed25519@openssh.com") + _sshstr(bytes(range(32))) + _sshstr(b"ssh:")
    line = f"sk-ssh-ed25519@openssh.com {base64.b64encode(blob).decode()} yubikey"
    parsed = parse_public_key(line)
    assert parsed.blob == blob
    assert parsed.fingerprint == ssh_fingerprint(blob)
    assert parsed.comment == "yubikey"


@pytest.mark.parametrize(
    "args",
    [
        ("-t", "ed25519"),
        ("-t", "rsa", "-b", "2048"),
        ("-t", "rsa", "-b", "2048", "-m", "PEM"),
        ("-t", "ecdsa", "-m", "PKCS8"),
    ],
    ids=["openssh-ed25519", "openssh-rsa", "pem-rsa", "pkcs8-ecdsa"],
)
def test_a_private_key_is_refused_with_a_clear_message_that_does_not_echo_it(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    text = _keygen(tmp_path, "id", *args).read_text()
    error = _refused(text, "private key", "ssh-keygen -y")
    _never_echoes(error, text)
    # also when it is pasted after the public line
    pub = tmp_path.joinpath("id.pub").read_text()
    _never_echoes(_refused(pub + text, "private key"), text)


def test_a_putty_private_key_is_refused_as_a_private_key() -> None:
    text = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\nAAAAsecret\n"
    _refused(text, "private key")


def test_dsa_and_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    rsa = _keygen(tmp_path, "short", "-t", "rsa", "-b", "1024").with_suffix(".pub")
    _refused(rsa.read_text(), "2048", "1024")
    # ssh-keygen no longer makes DSA keys: the line's type is enough to refuse it
    _refused("ssh-dss AAAAB3NzaC1kc3MAAACBAP== old", "DSA")


def test_certificates_are_refused(tmp_path: Path) -> None:
    ca = _keygen(tmp_path, "ca", "-t", "ed25519")
    user = _keygen(tmp_path, "user", "-t", "ed25519")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "alice", "-n", "alice", str(user) + ".pub"],
        check=True,
        capture_output=True,
    )
    cert = tmp_path / "user-cert.pub"
    _refused(cert.read_text(), "certificates")


def test_authorized_keys_options_are_refused(tmp_path: Path) -> None:
    line = _keygen(tmp_path, "id", "-t", "ed25519").with_suffix(".pub").read_text()
    _refused(f'from="10.0.0.0/8" {line}', "options")
    _refused(f'command="echo hi there",no-pty {line}', "options")
    _refused(f"restrict {line}", "options")


def test_malformed_lines_are_refused_without_echoing_them(tmp_path: Path) -> None:
    ed = _keygen(tmp_path, "ed", "-t", "ed25519").with_suffix(".pub").read_text().split()
    rsa = _keygen(tmp_path, "rsa", "-t", "rsa").with_suffix(".pub").read_text().split()
    blob = base64.b64decode(ed[1])
    bad = {
        "": "no public key",
        "   \n\n": "no public key",
        "hello world": "unknown key type",
        "ssh-ed25519": "no key data",
        "ssh-ed25519 !!!not-base64!!!": "base64",
        f"ssh-ed25519 {base64.b64encode(blob[:-5]).decode()}": "not a valid key",
        f"ssh-ed25519 {base64.b64encode(blob + b'extra').decode()}": "not a valid key",
        f"ssh-rsa {ed[1]}": "not a valid key",  # the blob says ed25519
        f"ssh-ed25519 {rsa[1]}": "not a valid key",
        f"{' '.join(ed)}\n{' '.join(rsa)}": "exactly one",
        f"ssh-ed25519 {ed[1]} {'x' * 300}": "comment",
        f"ssh-ed25519 {ed[1]} bad\x07bell": "comment",
        f"ssh-ed25519 {'A' * 20_000}": "too long",
    }
    for text, why in bad.items():
        _never_echoes(_refused(text, why), text)


def test_fingerprints_are_accepted_with_or_without_their_prefix_and_checked() -> None:
    fp = ssh_fingerprint(b"any blob")
    assert fp.startswith("SHA256:")
    assert "=" not in fp
    assert normalize_fingerprint(fp) == fp
    assert normalize_fingerprint(fp.removeprefix("SHA256:")) == fp
    assert normalize_fingerprint(f"  {fp}\n") == fp
    for bad in ("", "SHA256:", "SHA256:abc", "MD5:aa:bb", fp + "AAAA", "SHA256:" + "!" * 43):
        with pytest.raises(ValidationError):
            normalize_fingerprint(bad)
