"""Callback credentials (password field, RSA signature) and the client-address allow-list."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import ConfigError
from pipeline.events import EventFields, signed_message
from pipeline.fold import AUTH_FAILED as FAILED
from pipeline.fold import NOT_APPLICABLE, SIGNED, UNVERIFIED, VERIFIED
from pipeline.sections import WebhookConfig

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (IPv4-mapped IPv6 folded to IPv4), or None when `text` is not one."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _networks(values: Iterable[str], key: str) -> tuple[_Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"invalid config value for webhook.{key}: not an IP address or CIDR network: {value!r}"
            ) from None
    return tuple(networks)


def _in(address, networks: tuple[_Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


class Authenticator:
    """Decides a callback's `auth` value and whether its client address is allowed."""

    def __init__(
        self,
        password: str = "",
        public_key: rsa.RSAPublicKey | None = None,
        allowed: tuple[_Network, ...] = (),
        trusted_proxies: tuple[_Network, ...] = (),
        previous_password: str = "",
    ):
        self._password = password.encode("utf-8") if password else b""
        # during a rotation the old password is accepted too (docs/deploy.md); never without a current one
        self._previous = previous_password.encode("utf-8") if previous_password and password else b""
        self._public_key = public_key
        self._allowed = allowed
        self._trusted = trusted_proxies

    @classmethod
    def from_config(cls, webhook: WebhookConfig) -> Authenticator:
        public_key = None
        try:
            pem = webhook.public_key_pem()
        except OSError as exc:
            raise ConfigError(
                f"invalid config value for webhook.signature_public_key_pem: cannot read {exc.filename}: {exc.strerror}"
            ) from None
        if pem:
            try:
                public_key = serialization.load_pem_public_key(pem)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(
                    f"invalid config value for webhook.signature_public_key_pem: {str(exc).splitlines()[0]}"
                ) from None
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise ConfigError("invalid config value for webhook.signature_public_key_pem: not an RSA public key")
        return cls(
            password=webhook.password.get_secret_value(),
            previous_password=webhook.previous_password.get_secret_value(),
            public_key=public_key,
            allowed=_networks(webhook.allowed_ips, "allowed_ips"),
            trusted_proxies=_networks(webhook.trusted_proxies, "trusted_proxies"),
        )

    @property
    def credential_required(self) -> bool:
        return bool(self._password) or self._public_key is not None

    # --- client address -------------------------------------------------------------------------

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the direct peer, or, when the peer is a trusted proxy, the right-most
        X-Forwarded-For entry that is not itself a trusted proxy (entries further left are client-controlled)."""
        if not forwarded_for or not self._trusted or not _in(parse_address(peer), self._trusted):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not _in(parse_address(hop), self._trusted):
                return hop[:64]
        return hops[0][:64] if hops else peer

    def address_allowed(self, address: str | None) -> bool:
        if not self._allowed:
            return True
        return _in(parse_address(address), self._allowed)

    # --- credentials ----------------------------------------------------------------------------

    def check(self, fields: EventFields, body: bytes) -> str:
        """`n/a` without a configured credential; `verified` when a configured credential matches;
        `failed` when one is present but wrong; `unverified` when none is present."""
        if not self.credential_required:
            return NOT_APPLICABLE
        presented = failed = False
        if self._password and fields.password:
            presented = True
            if self._password_matches(fields.password.encode("utf-8", errors="surrogatepass")):
                return VERIFIED
            failed = True
        if self._public_key is not None and fields.signature:
            presented = True
            if self._signature_valid(fields.signature, body):
                return SIGNED  # vouches only for the signed fields (pipeline.resolution reads only those)
            failed = True
        if failed:
            return FAILED
        return UNVERIFIED if not presented else FAILED

    def _password_matches(self, presented: bytes) -> bool:
        """Constant time; during a rotation both comparisons are always made (no short cut), so the answer's
        timing tells neither the password nor which of the two matched."""
        current = hmac.compare_digest(presented, self._password)
        if not self._previous:
            return current
        previous = hmac.compare_digest(presented, self._previous)
        return current or previous

    def _signature_valid(self, signature: str, body: bytes) -> bool:
        message = signed_message(body)
        if message is None:
            return False
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        try:
            self._public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return True

    def unchecked_auth(self) -> str:
        """The auth value of a body that could not be read as a callback (no credential could be checked)."""
        return UNVERIFIED if self.credential_required else NOT_APPLICABLE
