"""A server the tests run as a child process (nginx, Caddy): its address, its log, start and stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 15.0


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path  # what the server wrote, for failure messages

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for_port(self) -> None:
        """Until the server accepts connections on its port; RuntimeError with its log if it exits."""
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.process.args!r} exited with {self.process.returncode}: {self.output}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """End the process (by its PID), gently first."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
