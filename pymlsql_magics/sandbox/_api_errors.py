"""ECS error codes with the HTTP status and message Alibaba Cloud answers them with."""

from __future__ import annotations

_KNOWN: dict[str, tuple[int, str]] = {
    "SignatureDoesNotMatch": (400, "Specified signature does not match our calculation."),
    "IncompleteSignature": (400, "The request signature does not conform to Aliyun standards."),
    "InvalidAccessKeyId.NotFound": (404, "Specified access key is not found."),
    "InvalidTimeStamp.Expired": (400, "Specified time stamp or date value is expired."),
    "InvalidTimeStamp.Format": (400, "Specified time stamp or date value is not well formatted."),
    "SignatureNonceUsed": (400, "The request signature nonce has been used."),
    "InvalidSecurityToken.MismatchWithAccessKey": (
        400,
        "The security token you are using does not match your access key.",
    ),
    "InvalidSecurityToken.Expired": (400, "Specified SecurityToken is expired."),
    "InvalidAction.NotFound": (404, "Specified api is not found, please check your url and method."),
    "MissingParameter": (
        400,
        "The input parameter that is mandatory for processing this request is not supplied.",
    ),
    "InvalidParameter": (400, "The specified parameter is not valid."),
    "InvalidRegionId.NotFound": (404, "The specified RegionId does not exist."),
    "InvalidZoneId.NotFound": (404, "The specified ZoneId does not exist."),
    "InvalidInstanceId.NotFound": (404, "The specified InstanceId does not exist."),
    "IncorrectInstanceStatus": (403, "The current status of the resource does not support this operation."),
    "InvalidImageId.NotFound": (404, "The specified ImageId does not exist."),
    "InvalidInstanceType.ValueNotSupported": (
        400,
        "The specified InstanceType does not exist or beyond the permitted range.",
    ),
    "InvalidSecurityGroupId.NotFound": (404, "The specified SecurityGroupId does not exist."),
    "InvalidVSwitchId.NotFound": (404, "The specified VSwitchId does not exist."),
    "InvalidKeyPairName.NotFound": (404, "The specified KeyPairName does not exist."),
    "KeyPair.AlreadyExist": (400, "The key pair already exist."),
    "InvalidPublicKeyBody.Malformed": (400, "The specified public key body is malformed."),
    "InvalidKeyPairName.Malformed": (400, "The specified KeyPairName is not valid."),
    "InvalidUserData.Base64FormatInvalid": (400, "The specified UserData is not valid Base64."),
    "InvalidUserData.SizeExceeded": (400, "The specified UserData exceeds the size limit of 32 KB."),
    "IdempotentParameterMismatch": (
        400,
        "The request uses the same client token as a previous, but non-identical request.",
    ),
    "OperationDenied.NoStock": (
        403,
        "The requested resource is sold out in the specified zone; try other types of resources or other "
        "regions and zones.",
    ),
    "InvalidInstanceType.Missing": (404, "The InstanceType is required."),
    "InvalidSystemDiskCategory.ValueNotSupported": (400, "The specified SystemDisk.Category is not supported."),
    "InvalidInternetChargeType.ValueNotSupported": (400, "The specified InternetChargeType is not supported."),
    "InvalidPeriod": (400, "The specified Period is not valid."),
    "IdempotentProcessing": (403, "The previous idempotent request(s) is still processing."),
    "IncorrectInstanceStatus.Initializing": (403, "The specified instance is in initializing status."),
    "InvalidAutoReleaseTime.Malformed": (400, "The specified AutoReleaseTime is not valid."),
    "AllocatedAlready": (403, "The instance already has a public IP address."),
    "AllocateIpInvalidInstanceBandwidth": (400, "The instance has no outbound internet bandwidth."),
    "InvalidSecurityGroupName.Malformed": (400, "The specified SecurityGroupName is not valid."),
    "InvalidTagKey.Malformed": (400, "The specified tag key is not valid."),
    "InvalidInvokeId.NotFound": (404, "The specified InvokeId does not exist."),
    "InvalidCommandType.NotSupported": (400, "The specified command type is not supported."),
    "InstanceNotRunning": (403, "The Cloud Assistant agent on the instance is not running."),
    "Throttling": (400, "Request was denied due to user flow control."),
    "Throttling.User": (400, "Request was denied due to user flow control."),
    "InternalError": (500, "The request processing has failed due to some unknown error."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
}


class ApiError(Exception):
    """An ECS API error answered to the client as Alibaba Cloud would answer it."""

    def __init__(self, code: str, *, message: str | None = None, status: int | None = None) -> None:
        known_status, known_message = _KNOWN.get(code, (400, code))
        self.code = code
        self.message = message or known_message
        self.status = status or known_status
        super().__init__(f"{code}: {self.message}")


def missing(name: str) -> ApiError:
    return ApiError(
        "MissingParameter",
        message=(
            f'The input parameter "{name}" that is mandatory for processing this request '
            "is not supplied."
        ),
    )


def invalid(name: str, why: str = "is not valid") -> ApiError:
    return ApiError("InvalidParameter", message=f'The specified parameter "{name}" {why}.')
