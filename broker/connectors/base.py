"""What every connector offers the use-case layer."""

from __future__ import annotations

from typing import Protocol


class Connector(Protocol):
    """An identity store the portal can list. Flow-specific methods live on each connector."""

    @property
    def name(self) -> str: ...

    @property
    def display_name(self) -> str: ...

    @property
    def kind(self) -> str: ...
