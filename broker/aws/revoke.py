"""Revoking live STS sessions: an inline deny policy on the role, conditioned on ``aws:TokenIssueTime``.

STS credentials cannot be recalled, but every request made with them is evaluated against the role's policies
at the time of the request. A ``Deny`` statement with ``DateLessThan aws:TokenIssueTime <now>`` therefore kills
every session issued before ``now`` (this is what the IAM console's "Revoke active sessions" writes, IAM User
Guide, "Revoking IAM role temporary security credentials"). Adding ``StringEquals aws:SourceIdentity`` narrows
it to one person: the broker sets SourceIdentity on every AssumeRole, and STS carries it through role
chaining, so the person cannot shed it.

Statements are pruned once they can no longer match anything: a session issued before the statement's time
has expired once the role's maximum session duration has passed. For each SourceIdentity only the latest
statement matters, and a role-wide statement supersedes every earlier one. That keeps the policy under IAM's
limit on a role's inline policies (10,240 characters in total, IAM quotas).

This module and ``sts.py`` are the only boto3 users; the IAM client needs ``iam:GetRole``,
``iam:GetRolePolicy`` and ``iam:PutRolePolicy`` on the managed roles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import BrokerError, ServiceUnavailable, UpstreamError
from broker.settings import STS_MAX_DURATION, AwsSettings

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

POLICY_NAME = "BrokerRevokedSessions"
# IAM quota: the aggregate size of a role's inline policies, whitespace excluded.
MAX_INLINE_POLICY_CHARS = 10240
SID_PREFIX = "BrokerRevoke"


@dataclass(frozen=True)
class DenyStatement:
    """One revocation: sessions of ``source_identity`` (or of everybody, when None) issued before ``before``."""

    before: datetime
    source_identity: str | None = None

    def to_json(self) -> dict[str, Any]:
        condition: dict[str, Any] = {"DateLessThan": {"aws:TokenIssueTime": iso(self.before)}}
        if self.source_identity is not None:
            condition["StringEquals"] = {"aws:SourceIdentity": self.source_identity}
        who = self.source_identity or "*"
        digest = hashlib.sha256(f"{who}|{iso(self.before)}".encode()).hexdigest()[:16]
        return {
            "Sid": f"{SID_PREFIX}{digest}",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": condition,
        }

    @classmethod
    def from_json(cls, statement: Any) -> DenyStatement | None:
        """Parse a statement this module wrote; None for anything else (which is kept untouched)."""
        if not isinstance(statement, dict) or not str(statement.get("Sid", "")).startswith(SID_PREFIX):
            return None
        try:
            condition = statement["Condition"]
            before = datetime.fromisoformat(condition["DateLessThan"]["aws:TokenIssueTime"].replace("Z", "+00:00"))
            who = condition.get("StringEquals", {}).get("aws:SourceIdentity")
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return cls(before=before, source_identity=who if isinstance(who, str) else None)


def iso(moment: datetime) -> str:
    """IAM date condition values: ISO 8601 in UTC with a Z, to the second (IAM User Guide, date operators)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def compact(
    current: list[Any], new: DenyStatement, *, now: datetime, max_session: timedelta
) -> tuple[list[Any], list[DenyStatement]]:
    """Merge ``new`` into the statements of the broker's policy; return the statements and those dropped.

    Pure (tested without AWS). Dropped: statements older than the longest possible session (nothing issued
    before them can still be alive), statements superseded by a later one for the same SourceIdentity, and
    statements superseded by a later role-wide one.
    """
    foreign = [s for s in current if DenyStatement.from_json(s) is None]
    ours = [d for d in (DenyStatement.from_json(s) for s in current) if d is not None] + [new]
    horizon = now - max_session
    live = [d for d in ours if d.before > horizon]
    role_wide = max((d.before for d in live if d.source_identity is None), default=None)
    latest: dict[str | None, DenyStatement] = {}
    for d in live:
        if d.source_identity is not None and role_wide is not None and d.before <= role_wide:
            continue
        kept = latest.get(d.source_identity)
        if kept is None or d.before > kept.before:
            latest[d.source_identity] = d
    keep = sorted(latest.values(), key=lambda d: (d.before, d.source_identity or ""))
    dropped = [d for d in ours if d not in keep]
    return foreign + [d.to_json() for d in keep], dropped


def policy_size(document: dict[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":")))


class PolicyLimitReached(UpstreamError):
    """Even after pruning, the deny policy would exceed IAM's inline policy size."""

    default_message = (
        "The role's revocation policy is full. Revoke the whole role (`broker revoke role`) to replace the "
        "per-person statements with one role-wide statement."
    )


@dataclass(frozen=True)
class RevokeResult:
    role_arn: str
    statement: dict[str, Any]
    pruned: int
    policy_chars: int


def translate(exc: Exception) -> BrokerError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "") or "error"
        if code in {"Throttling", "ThrottlingException"}:
            return ServiceUnavailable("IAM is throttling; try the revocation again.", reason="iam_throttled")
        if code in {"AccessDenied", "AccessDeniedException"}:
            return UpstreamError(
                "AWS denied the broker iam:PutRolePolicy on this role; the revocation is recorded in the broker "
                "but not enforced in AWS.",
                reason="iam_access_denied",
            )
        return UpstreamError(reason=f"iam_{code}".lower()[:64])
    return ServiceUnavailable("AWS IAM is unreachable.", reason="iam_unavailable")


class RoleRevoker:
    """Writes the broker's deny policy onto IAM roles. One reused client (boto3 clients are thread-safe)."""

    def __init__(self, settings: AwsSettings) -> None:
        config = Config(
            region_name=settings.region,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
        )
        # IAM is a global service with one endpoint; emulators serve it next to STS.
        endpoint = settings.iam_endpoint_url or settings.sts_endpoint_url or "https://iam.amazonaws.com"
        self._client: IAMClient = boto3.session.Session().client("iam", endpoint_url=endpoint, config=config)

    @staticmethod
    def role_name(role_arn: str) -> str:
        # arn:aws:iam::123456789012:role/path/Name -> Name (IAM APIs take the name without the path).
        return role_arn.rsplit("/", 1)[-1]

    def current_policy(self, role_arn: str) -> dict[str, Any]:
        try:
            response = self._client.get_role_policy(RoleName=self.role_name(role_arn), PolicyName=POLICY_NAME)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
                return {"Version": "2012-10-17", "Statement": []}
            raise translate(exc) from None
        except BotoCoreError as exc:
            raise translate(exc) from None
        document = response["PolicyDocument"]
        # boto3 URL-decodes and parses the document; some emulators return it as a string.
        parsed: dict[str, Any] = json.loads(document) if isinstance(document, str) else dict(document)
        return parsed

    def max_session(self, role_arn: str, fallback_seconds: int) -> timedelta:
        try:
            seconds = int(self._client.get_role(RoleName=self.role_name(role_arn))["Role"]["MaxSessionDuration"])
        except (ClientError, BotoCoreError, KeyError, ValueError):
            seconds = STS_MAX_DURATION  # unknown: assume the longest STS allows, so nothing live is pruned
        return timedelta(seconds=max(seconds, fallback_seconds))

    def deny_sessions(
        self,
        role_arn: str,
        *,
        before: datetime,
        source_identity: str | None,
        now: datetime,
        fallback_max_session_seconds: int = STS_MAX_DURATION,
    ) -> RevokeResult:
        """Deny every session of ``role_arn`` issued before ``before`` (of ``source_identity`` only, if given)."""
        new = DenyStatement(before=before, source_identity=source_identity)
        document = self.current_policy(role_arn)
        statements = document.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        merged, dropped = compact(
            statements, new, now=now, max_session=self.max_session(role_arn, fallback_max_session_seconds)
        )
        policy = {"Version": "2012-10-17", "Statement": merged}
        size = policy_size(policy)
        if size > MAX_INLINE_POLICY_CHARS:
            raise PolicyLimitReached(reason="iam_policy_full")
        try:
            self._client.put_role_policy(
                RoleName=self.role_name(role_arn), PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy)
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc) from None
        return RevokeResult(role_arn, new.to_json(), len(dropped), size)
