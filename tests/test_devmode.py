"""`broker dev` never leaves its STS emulator running, however it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.support.processes import broker_env, end_process_group, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_emulator_ends_when_broker_dev_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives `broker dev` no chance to clean up: the emulator must end by itself."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "dev", "--port", str(port), "--data-dir", str(tmp_path / "dev")],
        cwd=ROOT,
        env=broker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    emulators: list[psutil.Process] = []
    try:
        wait_for_port(port, process=process, timeout=60)
        emulators = [
            child for child in psutil.Process(process.pid).children() if "moto.server" in " ".join(child.cmdline())
        ]
        assert len(emulators) == 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        _, alive = psutil.wait_procs(emulators, timeout=10)
        assert alive == [], "moto outlived `broker dev`"
    finally:
        for emulator in emulators:
            if emulator.is_running():
                emulator.kill()
        end_process_group(process)
