"""STS issuance: one reused boto3 client, AssumeRole with the verified principal as SourceIdentity.

botocore's own DEBUG logging prints response bodies (credentials included); ``broker.logs`` keeps botocore
at WARNING whatever the broker's level is.

A broker without AWS credentials of its own (``NoCredentialsError``), or with a broken AWS profile, is a
configuration error, not an outage: it is named as such in the log, in the refusal and in ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    InvalidConfigError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from broker.errors import BrokerError, PolicyTooLarge, ServiceUnavailable, UpstreamError
from broker.identity import Credentials
from broker.logs import get_logger
from broker.settings import AwsSettings

log = get_logger("broker.aws")

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient

_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
# Seconds a caller should wait after STS throttles or is unreachable (the standard retry mode already
# backed off max_attempts times before this surfaces).
RETRY_AFTER_SECONDS = 5
# botocore's errors for the broker's own AWS setup: nothing to retry, an administrator must act.
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
_BAD_CONFIG = (ProfileNotFound, NoRegionError, InvalidConfigError)
NO_CREDENTIALS_HINT = (
    "the broker found no AWS credentials of its own (environment, shared credentials file, container or "
    "instance role); give it credentials that may call sts:AssumeRole, or use aws.mode: web_identity"
)


@dataclass(frozen=True)
class AssumeRoleRequest:
    role_arn: str
    role_session_name: str
    source_identity: str
    duration_seconds: int
    tags: dict[str, str]
    transitive_tag_keys: tuple[str, ...] = ()
    session_policy: str | None = None
    policy_arns: tuple[str, ...] = ()


def translate(exc: Exception) -> BrokerError:
    """Map botocore failures to broker errors that say what to do."""
    if isinstance(exc, _NO_CREDENTIALS):
        return ServiceUnavailable(
            "The broker has no AWS credentials of its own, so it cannot ask AWS for yours. "
            "An administrator must configure them (see the deployment guide).",
            reason="sts_no_credentials",
        )
    if isinstance(exc, _BAD_CONFIG):
        return ServiceUnavailable(
            "The broker's own AWS configuration is invalid. An administrator must fix it (see the broker's log).",
            reason="sts_config_invalid",
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _THROTTLED:
            return ServiceUnavailable(
                "AWS is throttling credential requests. Try again in a few seconds.",
                reason="sts_throttled",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if code == "PackedPolicyTooLarge":
            return PolicyTooLarge(reason="sts_packed_policy_too_large")
        if code in {"AccessDenied", "AccessDeniedException"}:
            return UpstreamError(
                "AWS denied the broker access to this role. Ask an administrator to check the role's trust policy.",
                reason="sts_access_denied",
            )
        if code == "RegionDisabledException":
            return UpstreamError("STS is not activated in the configured region.", reason="sts_region_disabled")
        if code == "ExpiredTokenException":
            return ServiceUnavailable(
                "The broker's own AWS credentials have expired.", reason="sts_broker_credentials_expired"
            )
        return UpstreamError(reason=f"sts_{code or 'error'}".lower()[:64])
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | BotoCoreError):
        return ServiceUnavailable(
            "AWS STS is unreachable. Try again in a minute.", reason="sts_unavailable", retry_after=RETRY_AFTER_SECONDS
        )
    return UpstreamError(reason="sts_error")


class Sts:
    """The broker's STS client, created once and reused (boto3 clients are thread-safe).

    With ``aws.mode: web_identity`` the client is unsigned (the broker holds no AWS key) and every
    :meth:`assume_role` becomes ``AssumeRoleWithWebIdentity`` with a token from ``web_identity_token``, which
    the broker signs itself for that one request.
    """

    def __init__(
        self, settings: AwsSettings, *, web_identity_token: Callable[[AssumeRoleRequest], str] | None = None
    ) -> None:
        self._settings = settings
        self._web_identity_token = web_identity_token
        if settings.mode == "web_identity" and web_identity_token is None:
            raise ValueError("aws.mode web_identity needs a web identity token source")
        options: dict[str, Any] = {"signature_version": UNSIGNED} if settings.mode == "web_identity" else {}
        config = Config(
            region_name=settings.region,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            **options,
        )
        endpoint = settings.sts_endpoint_url or f"https://sts.{settings.region}.amazonaws.com"
        # Resolved once here, and cached by the session for the client: a client made without credentials
        # never finds any later, so their absence is a standing configuration problem, reported by /readyz.
        self.configuration_problem: str | None = None
        self._client: STSClient | None = None
        try:
            session = boto3.session.Session()
            if settings.mode != "web_identity" and session.get_credentials() is None:
                self.configuration_problem = f"NoCredentialsError: {NO_CREDENTIALS_HINT}"
            self._client = session.client("sts", endpoint_url=endpoint, config=config)
        except (*_NO_CREDENTIALS, *_BAD_CONFIG) as exc:
            self.configuration_problem = f"{type(exc).__name__}: {exc}"
        if self.configuration_problem is not None:
            log.error("aws configuration error", problem=self.configuration_problem)

    @property
    def client(self) -> STSClient:
        """The STS client; raises the configuration error (logged) when the AWS setup could not make one."""
        if self._client is None:
            log.error("aws configuration error", problem=self.configuration_problem)
            raise ServiceUnavailable(
                "The broker's own AWS configuration is invalid. An administrator must fix it (see the broker's log).",
                reason="sts_config_invalid",
            )
        return self._client

    def assume_role(self, request: AssumeRoleRequest) -> Credentials:
        if self._settings.mode == "web_identity":
            assert self._web_identity_token is not None
            return self.assume_role_with_web_identity(request, web_identity_token=self._web_identity_token(request))
        params: dict[str, Any] = {
            "RoleArn": request.role_arn,
            "RoleSessionName": request.role_session_name,
            "SourceIdentity": request.source_identity,
            "DurationSeconds": request.duration_seconds,
        }
        if request.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in request.tags.items()]
        if request.transitive_tag_keys:
            params["TransitiveTagKeys"] = list(request.transitive_tag_keys)
        return self._call(self.client.assume_role, params, request)

    def assume_role_with_web_identity(self, request: AssumeRoleRequest, *, web_identity_token: str) -> Credentials:
        """AssumeRoleWithWebIdentity: no AWS key involved; the token proves the broker is asking.

        STS takes SourceIdentity and session tags from the token's claims for this call, not from parameters
        (IAM User Guide, "Passing session tags using AssumeRoleWithWebIdentity").
        """
        params: dict[str, Any] = {
            "RoleArn": request.role_arn,
            "RoleSessionName": request.role_session_name,
            "WebIdentityToken": web_identity_token,
            "DurationSeconds": request.duration_seconds,
        }
        return self._call(self.client.assume_role_with_web_identity, params, request)

    @staticmethod
    def _call(operation: Any, params: dict[str, Any], request: AssumeRoleRequest) -> Credentials:
        """Add the session policies both calls share, call STS, and translate its answer or its error."""
        if request.session_policy:
            params["Policy"] = request.session_policy
        if request.policy_arns:
            params["PolicyArns"] = [{"arn": arn} for arn in request.policy_arns]
        try:
            response = operation(**params)
        except (*_NO_CREDENTIALS, *_BAD_CONFIG) as exc:
            # botocore's message names what is missing (never a key): the operator needs it, the caller not.
            log.error("aws configuration error", error=type(exc).__name__, detail=str(exc), role=request.role_arn)
            raise translate(exc) from None
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc) from None
        creds = response["Credentials"]
        return Credentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=creds["Expiration"],
            assumed_role_arn=response.get("AssumedRoleUser", {}).get("Arn", ""),
        )
