"""Audit digests in an S3 bucket with Object Lock: written once, undeletable until their retention ends.

The bucket must be created with Object Lock enabled (``ObjectLockEnabledForBucket``, which also turns on
versioning). Every digest is put with ``ObjectLockMode`` and ``ObjectLockRetainUntilDate``; in COMPLIANCE mode
no user, not even the account's root, can delete or overwrite that version before the date (S3 User Guide,
"Locking objects with Object Lock"). The broker needs ``s3:PutObject`` and ``s3:PutObjectRetention`` on the
prefix; an auditor needs ``s3:ListBucket`` and ``s3:GetObject``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import AnchorUnavailable
from broker.settings import AuditS3Sink

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectLockSink:
    """One bucket and prefix; see ``broker.anchors.DigestSink``."""

    def __init__(
        self,
        client: S3Client | Any,
        *,
        bucket: str,
        prefix: str,
        retention: timedelta,
        mode: Literal["COMPLIANCE", "GOVERNANCE"],
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.retention = retention
        self.mode = mode
        self.location = f"s3://{bucket}/{prefix}"

    @classmethod
    def from_settings(cls, config: AuditS3Sink) -> ObjectLockSink:
        client = boto3.client(
            "s3",
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
        )
        return cls(
            client,
            bucket=config.bucket,
            prefix=config.prefix,
            retention=timedelta(days=config.retention_days),
            mode=config.lock_mode,
        )

    @classmethod
    def from_url(cls, url: str) -> ObjectLockSink:
        """``s3://bucket/prefix`` for reading; endpoint, region and credentials come from boto3's environment
        (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, profiles, roles)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise AnchorUnavailable(f"{url} names no bucket; use s3://BUCKET/PREFIX")
        client = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}))
        return cls(client, bucket=bucket, prefix=prefix, retention=timedelta(0), mode="COMPLIANCE")

    def put(self, name: str, data: bytes) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + name,
                Body=data,
                ContentType="application/jose",
                ObjectLockMode=self.mode,
                ObjectLockRetainUntilDate=datetime.now(UTC) + self.retention,
                ChecksumAlgorithm="SHA256",
            )
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"cannot write {self.location}{name}: {_describe(exc)}") from None

    def names(self) -> list[str]:
        names: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                names.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"cannot list {self.location}: {_describe(exc)}") from None
        return sorted(n for n in names if "/" not in n and n.endswith(".jws"))

    def get(self, name: str) -> bytes:
        try:
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise AnchorUnavailable(f"cannot read {self.location}{name}: {_describe(exc)}") from None
        return body


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return type(exc).__name__
