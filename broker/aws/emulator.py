"""The local AWS emulator that ``broker dev`` runs (moto's server): preparing it and asking it who a session is.

Only dev mode uses this module. The emulator accepts any access key, so dev mode gives the broker a fixed,
meaningless one (``EMULATOR_KEY``): it grants nothing anywhere, and real AWS refuses it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import ServiceUnavailable, UpstreamError
from broker.identity import Credentials

if TYPE_CHECKING:
    from broker.settings import AwsSettings, RoleConfig

EMULATOR_KEY = "dev-emulator"  # moto accepts any key id and secret; this one is not a credential.


def use_emulator_keys() -> None:
    """Give boto3 the emulator's placeholder key unless the environment already names AWS credentials."""
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        os.environ["AWS_ACCESS_KEY_ID"] = EMULATOR_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = EMULATOR_KEY


def _client(service: str, endpoint: str, region: str, **keys: str) -> Any:
    config = Config(region_name=region, connect_timeout=2, read_timeout=5, retries={"max_attempts": 2})
    return boto3.session.Session().client(service, endpoint_url=endpoint, config=config, **keys)  # type: ignore[call-overload]


def _trust_policy(account: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
                }
            ],
        }
    )


def ensure_roles(aws: AwsSettings, roles: list[RoleConfig]) -> list[str]:
    """Create each configured role in the emulator's IAM (revocation writes its deny policy onto them).

    Returns the names created now; roles that already exist are left as they are.
    """
    endpoint = aws.iam_endpoint_url or aws.sts_endpoint_url
    if endpoint is None:
        return []
    iam = _client("iam", endpoint, aws.region)
    created = []
    for role in roles:
        name = role.role_arn.rsplit("/", 1)[-1]
        try:
            iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=_trust_policy(role.account),
                MaxSessionDuration=max(3600, role.max_duration_seconds),
                Description=role.description[:1000],
            )
            created.append(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise UpstreamError(f"The AWS emulator refused to create role {name}.", reason="dev_role") from None
        except BotoCoreError:
            raise ServiceUnavailable("The AWS emulator is unreachable.", reason="dev_emulator_unavailable") from None
    return created


def caller_arn(aws: AwsSettings, credentials: Credentials) -> str | None:
    """GetCallerIdentity with these session credentials against the emulator: the assumed-role ARN, or None."""
    if aws.sts_endpoint_url is None:
        return None
    sts = _client(
        "sts",
        aws.sts_endpoint_url,
        aws.region,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )
    try:
        arn: str = sts.get_caller_identity()["Arn"]
    except (ClientError, BotoCoreError, KeyError):
        return None
    return arn
