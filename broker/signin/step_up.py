"""A step-up in flight: what the browser asked for before its IdP was asked for a stronger sign-in.

Stored server-side with the OIDC authorization request (``login_requests``), read back at the callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.identity import MfaLevel


@dataclass(frozen=True)
class PendingStepUp:
    """Open the console (``action="console"``) or show CLI credentials (``"credentials"``) in ``role``, once
    the person ``subject`` has signed in again at ``required`` strength (asked for with ``acr_values``)."""

    action: str
    role: str
    duration_seconds: int | None
    subject: str
    required: MfaLevel
    acr_values: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "role": self.role,
            "duration": self.duration_seconds,
            "subject": self.subject,
            "required": self.required.label,
            "acr_values": list(self.acr_values),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PendingStepUp | None:
        if not data:
            return None
        duration = data.get("duration")
        return cls(
            action=str(data["action"]),
            role=str(data["role"]),
            duration_seconds=int(duration) if duration is not None else None,
            subject=str(data["subject"]),
            required=MfaLevel.parse(str(data["required"])),
            acr_values=tuple(str(v) for v in data.get("acr_values") or ()),
        )
