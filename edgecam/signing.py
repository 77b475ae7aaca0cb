"""Ed25519 signatures over an artifact's manifest: the compiler signs, the camera verifies.

The manifest already holds the sha256 of every file in the artifact, so signing its exact bytes
signs the whole artifact. The signature lies beside it as `manifest.sig` (JSON: the signing key's id
and the signature); it is not among the manifest's files, since it is made after them.

Key rotation: a camera trusts a list of public keys, so a fleet trusts the old and the new key
while artifacts are re-signed, then drops the old one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_NAME = "manifest.sig"
PUBLIC_KEY_SUFFIXES = (".pem", ".pub")


class SignatureError(ValueError):
    """An artifact or key failed a signature check; `check` is the metric's reason label."""

    check = "signature"


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the start of the sha256 of its raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new PEM key pair (the private key readable by its owner only); return the key's id."""
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists; refusing to overwrite a key (choose another path)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.touch(mode=0o600)
    private_path.write_bytes(private)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read the signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is not an Ed25519 key (make one with `edgecam keygen`)")
    return key


def load_public_keys(sources: list[Path]) -> dict[str, Ed25519PublicKey]:
    """The trusted keys: PEM files, or directories of *.pem / *.pub files, by key id."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file())
        else:
            files.append(source)
    keys: dict[str, Ed25519PublicKey] = {}
    for file in files:
        try:
            key = serialization.load_pem_public_key(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise SignatureError(f"trusted_keys: cannot read public key {file}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"trusted_keys: {file} is not an Ed25519 public key")
        keys[key_id(key)] = key
    if sources and not keys:
        raise SignatureError(f"trusted_keys {[str(s) for s in sources]} hold no public key (*.pem, *.pub)")
    return keys


def sign_manifest(manifest_path: Path, key: Ed25519PrivateKey) -> str:
    """Write `manifest.sig` beside the manifest, for its bytes as they are on disk; return the key's id."""
    manifest = manifest_path.read_bytes()
    kid = key_id(key.public_key())
    signature = base64.b64encode(key.sign(manifest)).decode()
    manifest_path.with_name(SIGNATURE_NAME).write_text(
        json.dumps({"key_id": kid, "signature": signature}) + "\n"
    )
    return kid


def verify_manifest(manifest_path: Path, keys: dict[str, Ed25519PublicKey]) -> tuple[str, bytes]:
    """Check `manifest.sig` against the trusted keys; return (key id, the manifest bytes it covers)."""
    artifact_dir, signature_path = manifest_path.parent, manifest_path.with_name(SIGNATURE_NAME)
    if not manifest_path.is_file():
        raise SignatureError(
            f"{artifact_dir} has no {manifest_path.name}: only signed artifacts are served here"
        )
    manifest = manifest_path.read_bytes()
    if not signature_path.is_file():
        raise SignatureError(
            f"{artifact_dir} is not signed (no {SIGNATURE_NAME}) and this server trusts only signed "
            "artifacts: sign it with `edgecam compile/compress --sign-key` or `edgecam sign`"
        )
    try:
        record = json.loads(signature_path.read_text())
        kid, signature = str(record["key_id"]), base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SignatureError(f"{signature_path} is not a valid signature record: {exc}") from exc
    key = keys.get(kid)
    if key is None:
        raise SignatureError(
            f"{artifact_dir} is signed by key {kid}, which is not among the trusted keys {sorted(keys)}"
        )
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise SignatureError(
            f"{artifact_dir}: the signature by key {kid} does not match {manifest_path.name} "
            "(altered after signing?)"
        ) from None
    return kid, manifest
