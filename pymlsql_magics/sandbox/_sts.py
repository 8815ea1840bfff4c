"""STS credentials of instance RAM roles: what the metadata service hands out, and the API accepts.

An instance started with `RamRoleName` gets temporary credentials (an `STS.` AccessKey id, its
secret and a security token, valid six hours) from
http://100.100.100.200/latest/meta-data/ram/security-credentials/ROLE, as on ECS; a request signed
with them must carry the token (`x-acs-security-token`). There is no RAM here: any role name is
accepted, and a role may do everything the sandbox's own AccessKey may.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass

from ._api_errors import ApiError

LIFETIME = 6 * 3600.0
_RENEW_BEFORE = 3600.0  # ECS hands out new credentials well before the old ones expire


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    access_key_secret: str
    security_token: str
    role: str
    issued_at: float
    expires_at: float

    def as_metadata(self) -> str:
        """The JSON document the metadata service answers for the role."""
        return json.dumps({
            "AccessKeyId": self.access_key_id,
            "AccessKeySecret": self.access_key_secret,
            "SecurityToken": self.security_token,
            "Expiration": _iso(self.expires_at),
            "LastUpdated": _iso(self.issued_at),
            "Code": "Success",
        })  # fmt: skip


class RoleCredentialStore:
    """Credentials handed out, per instance and role; callers hold the World's lock."""

    def __init__(self) -> None:
        self._by_key: dict[str, RoleCredentials] = {}
        self._current: dict[tuple[str, str], RoleCredentials] = {}

    def for_instance(self, instance_id: str, role: str, now: float | None = None) -> RoleCredentials:
        now = time.time() if now is None else now
        held = self._current.get((instance_id, role))
        if held is not None and held.expires_at - now > _RENEW_BEFORE:
            return held
        alphabet = string.ascii_letters + string.digits
        made = RoleCredentials(
            access_key_id="STS." + "".join(secrets.choice(alphabet) for _ in range(24)),
            access_key_secret="".join(secrets.choice(alphabet) for _ in range(40)),
            security_token="CAIS" + secrets.token_urlsafe(96),
            role=role,
            issued_at=now,
            expires_at=now + LIFETIME,
        )
        self._current[(instance_id, role)] = made
        self._by_key[made.access_key_id] = made
        return made

    def secrets(self) -> dict[str, str]:
        """AccessKey id -> secret of every credential handed out, expired ones included."""
        return {key: held.access_key_secret for key, held in self._by_key.items()}

    def check_token(self, access_key_id: str, token: str | None, now: float | None = None) -> None:
        """Raises ApiError unless a request signed with an STS key carries its valid token."""
        held = self._by_key.get(access_key_id)
        if held is None:
            return  # the sandbox's own AccessKey: no token
        if not token or not secrets.compare_digest(token, held.security_token):
            raise ApiError("InvalidSecurityToken.MismatchWithAccessKey")
        if (time.time() if now is None else now) >= held.expires_at:
            raise ApiError("InvalidSecurityToken.Expired")


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
