"""The `broker` console script. `credential-process` takes a fast path that never imports the CLI framework,
because the AWS CLI runs it on every call; everything else goes to the full command (``broker.cli``)."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "credential-process" and "--help" not in sys.argv:
        from broker.client.process import main as credential_process

        sys.exit(credential_process(sys.argv[2:]))
    if sys.argv[1:3] == ["device", "credential-process"] and "--help" not in sys.argv:
        from broker.client.device import main as device_credential_process

        sys.exit(device_credential_process(sys.argv[3:]))
    from broker.cli import main as full

    full()
