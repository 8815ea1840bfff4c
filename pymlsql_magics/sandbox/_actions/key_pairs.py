"""Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPairs."""

from __future__ import annotations

import base64
import binascii
import hashlib
from fnmatch import fnmatchcase
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._api_errors import ApiError, missing
from .._model import KeyPair, new_id
from .._params import Params, page
from .registry import Context, action, ecs_time, matches_tags, region_of, tags_out


def _fingerprint(public_key_line: str) -> str:
    blob = base64.b64decode(public_key_line.split()[1])
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - a fingerprint, as ECS shows it
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _check_key_pair_name(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-.")
    if (
        not 2 <= len(name) <= 128
        or not name[0].isalpha()
        or name.startswith(("http://", "https://"))
        or not set(name) <= allowed
    ):
        raise ApiError("InvalidKeyPairName.Malformed")


def _add_key_pair(ctx: Context, region: str, name: str, public_key: str, params: Params) -> KeyPair:
    _check_key_pair_name(name)
    if (region, name) in ctx.world.key_pairs:
        raise ApiError("KeyPair.AlreadyExist")
    pair = KeyPair(
        name=name,
        key_pair_id=new_id("kp-", 20),
        fingerprint=_fingerprint(public_key),
        public_key=public_key,
        region_id=region,
        tags=params.new_tags(),
    )
    ctx.world.key_pairs[(region, name)] = pair
    return pair


@action
def CreateKeyPair(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    name = params.required("KeyPairName")
    _check_key_pair_name(name)
    if (region, name) in ctx.world.key_pairs:
        raise ApiError("KeyPair.AlreadyExist")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    pair = _add_key_pair(ctx, region, name, public, params)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "KeyPairName": pair.name,
        "KeyPairId": pair.key_pair_id,
        "KeyPairFingerPrint": pair.fingerprint,
        "PrivateKeyBody": private,
    }


@action
def ImportKeyPair(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    name = params.required("KeyPairName")
    body = params.required("PublicKeyBody").strip()
    parts = body.split()
    kinds = ("ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521")  # fmt: skip
    try:
        serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
        well_formed = parts[0] in kinds
    except (ValueError, IndexError, binascii.Error, TypeError, UnsupportedAlgorithm):
        well_formed = False
    if not well_formed:
        raise ApiError("InvalidPublicKeyBody.Malformed")
    pair = _add_key_pair(ctx, region, name, body, params)
    return {"KeyPairName": pair.name, "KeyPairFingerPrint": pair.fingerprint}


@action
def DescribeKeyPairs(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    pattern = params.text("KeyPairName")
    fingerprint = params.text("KeyPairFingerPrint")
    include_public = params.flag("IncludePublicKey")
    tags = params.tags()
    pairs = [
        pair
        for (pair_region, name), pair in sorted(ctx.world.key_pairs.items())
        if pair_region == region
        and (pattern is None or fnmatchcase(name, pattern))
        and (fingerprint is None or pair.fingerprint == fingerprint)
        and matches_tags(pair.tags, tags)
    ]
    chunk, paging = page(pairs, params, max_size=50)
    items = []
    for pair in chunk:
        item = {
            "KeyPairName": pair.name,
            "KeyPairFingerPrint": pair.fingerprint,
            "CreationTime": ecs_time(pair.creation_time),
            "ResourceGroupId": "",
            "Tags": tags_out(pair.tags),
        }
        if include_public:
            item["PublicKey"] = pair.public_key
        items.append(item)
    return {**paging, "KeyPairs": {"KeyPair": items}}


@action
def DeleteKeyPairs(ctx: Context, params: Params) -> dict[str, Any]:
    region = region_of(params)
    names = params.json_list("KeyPairNames")
    if not names:
        raise missing("KeyPairNames")
    for name in names:
        ctx.world.key_pairs.pop((region, name), None)
    return {}
