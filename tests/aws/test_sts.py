"""STS issuance against moto's server over HTTP: the credentials work, errors map to broker errors."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import NoCredentialsError, NoRegionError, PartialCredentialsError, ProfileNotFound

from broker import logs
from broker.aws.console import signin_url
from broker.aws.sts import AssumeRoleRequest, Sts, translate
from broker.errors import PolicyTooLarge, ServiceUnavailable, UpstreamError
from broker.settings import AwsSettings
from tests.support.federation_standin import FederationStandIn
from tests.support.processes import free_port, moto_server


def request(**kw: object) -> AssumeRoleRequest:
    fields: dict[str, object] = {
        "role_arn": "arn:aws:iam::123456789012:role/ReadOnly",
        "role_session_name": "alice",
        "source_identity": "alice@example.com",
        "duration_seconds": 900,
        "tags": {"Email": "alice@example.com"},
        "transitive_tag_keys": ("Email",),
        "session_policy": '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:List*",'
        '"Resource":"*"}]}',
    }
    fields.update(kw)
    return AssumeRoleRequest(**fields)  # type: ignore[arg-type]


def test_assumed_credentials_work_and_name_the_role_and_session(sts_endpoint: str) -> None:
    sts = Sts(AwsSettings(sts_endpoint_url=sts_endpoint))
    creds = sts.assume_role(request())
    assert creds.access_key_id and creds.session_token
    assert "secret" not in repr(creds).lower() or creds.secret_access_key not in repr(creds)
    caller = boto3.client(
        "sts",
        endpoint_url=sts_endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    ).get_caller_identity()
    assert caller["Arn"] == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"
    assert creds.assumed_role_arn == caller["Arn"]


def test_unreachable_sts_is_a_503_with_retry_after() -> None:
    sts = Sts(
        AwsSettings(
            sts_endpoint_url=f"http://127.0.0.1:{free_port()}",
            max_attempts=1,
            connect_timeout_seconds=0.5,
            read_timeout_seconds=0.5,
        )
    )
    with pytest.raises(ServiceUnavailable) as info:
        sts.assume_role(request())
    assert info.value.reason == "sts_unavailable" and info.value.retry_after


def test_sts_refusal_is_an_upstream_error() -> None:
    # With authentication enforced, moto refuses the broker's unknown key the way STS would.
    with moto_server(enforce_auth=True) as endpoint:
        sts = Sts(AwsSettings(sts_endpoint_url=endpoint))
        with pytest.raises(UpstreamError) as info:
            sts.assume_role(request())
    assert info.value.status == 502
    assert info.value.reason.startswith("sts_")


def test_console_signin_url_through_the_federation_standin(sts_endpoint: str) -> None:
    creds = Sts(AwsSettings(sts_endpoint_url=sts_endpoint)).assume_role(request())
    with FederationStandIn(sts_endpoint) as standin:
        url = signin_url(
            creds,
            endpoint=standin.url,
            destination="https://console.aws.amazon.com/",
            issuer="https://broker.example.com",
            session_duration=900,
        )
        assert "SigninToken=" in url and "Action=login" in url
        import httpx

        page = httpx.get(url)
        assert page.status_code == 200
        assert standin.logins[0].arn.endswith("assumed-role/ReadOnly/alice")
        assert standin.logins[0].issuer == "https://broker.example.com"
        assert standin.logins[0].session_duration == "900"
        assert httpx.get(url).status_code == 400  # a sign-in token works once


def test_console_refuses_credentials_sts_never_issued(sts_endpoint: str) -> None:
    from datetime import UTC, datetime

    from broker.identity import Credentials

    fake = Credentials("ASIAFAKE", "fake-secret", "fake-token", datetime.now(UTC))
    with FederationStandIn(sts_endpoint) as standin, pytest.raises(UpstreamError):
        signin_url(
            fake, endpoint=standin.url, destination="https://console.aws.amazon.com/", issuer="x", session_duration=None
        )


@pytest.mark.parametrize(
    ("code", "error", "reason"),
    [
        ("Throttling", ServiceUnavailable, "sts_throttled"),
        ("RequestLimitExceeded", ServiceUnavailable, "sts_throttled"),
        ("PackedPolicyTooLarge", PolicyTooLarge, "sts_packed_policy_too_large"),
        ("AccessDenied", UpstreamError, "sts_access_denied"),
        ("RegionDisabledException", UpstreamError, "sts_region_disabled"),
        ("ExpiredTokenException", ServiceUnavailable, "sts_broker_credentials_expired"),
        ("SomethingNew", UpstreamError, "sts_somethingnew"),
    ],
)
def test_sts_error_codes_map_to_broker_errors(code: str, error: type[Exception], reason: str) -> None:
    """STS error codes moto cannot produce on demand (throttling, packed policy size) map as documented."""
    from botocore.exceptions import ClientError

    translated = translate(ClientError({"Error": {"Code": code, "Message": "m"}}, "AssumeRole"))
    assert type(translated) is error
    assert translated.reason == reason
    if code == "Throttling":
        assert translated.retry_after and translated.status == 503


def test_no_credentials_is_a_named_configuration_error_not_an_outage(
    no_aws_credentials: None, sts_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("INFO", json=True)
    sts = Sts(AwsSettings(sts_endpoint_url=sts_endpoint))
    assert sts.configuration_problem is not None
    assert sts.configuration_problem.startswith("NoCredentialsError: the broker found no AWS credentials")
    with pytest.raises(ServiceUnavailable) as info:
        sts.assume_role(request())
    assert info.value.reason == "sts_no_credentials"
    assert info.value.retry_after == ServiceUnavailable.default_retry_after
    assert "no AWS credentials of its own" in info.value.message
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"broker.aws"' in line]
    assert [(e["level"], e["event"]) for e in logged] == [("error", "aws configuration error")] * 2
    assert logged[0]["problem"].startswith("NoCredentialsError: the broker found no AWS credentials")
    assert (logged[1]["error"], logged[1]["detail"]) == ("NoCredentialsError", "Unable to locate credentials")


def test_an_unknown_profile_is_a_named_configuration_error(
    no_aws_credentials: None, monkeypatch: pytest.MonkeyPatch, sts_endpoint: str
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "does-not-exist")
    sts = Sts(AwsSettings(sts_endpoint_url=sts_endpoint))
    assert sts.configuration_problem is not None
    assert sts.configuration_problem.startswith("ProfileNotFound: The config profile (does-not-exist)")
    with pytest.raises(ServiceUnavailable) as info:
        sts.assume_role(request())
    assert info.value.reason == "sts_config_invalid"


def test_web_identity_mode_needs_no_credentials_of_its_own(no_aws_credentials: None, sts_endpoint: str) -> None:
    sts = Sts(AwsSettings(sts_endpoint_url=sts_endpoint, mode="web_identity"), web_identity_token=lambda r: "t")
    assert sts.configuration_problem is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (NoCredentialsError(), "sts_no_credentials"),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "sts_no_credentials"),
        (ProfileNotFound(profile="x"), "sts_config_invalid"),
        (NoRegionError(), "sts_config_invalid"),
    ],
)
def test_configuration_errors_translate_to_their_own_reasons(error: Exception, reason: str) -> None:
    translated = translate(error)
    assert (type(translated), translated.reason, translated.retry_after) == (ServiceUnavailable, reason, 60)
