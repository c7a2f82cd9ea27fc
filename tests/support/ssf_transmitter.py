"""The tests' Shared Signals transmitter, run as a process of its own (as an IdP's or EDR's is).

The transmitter is :mod:`ztproxy.demo.transmitter` (the demo runs it too): SSF configuration,
JWKS, stream management, and control endpoints with which a test has it sign and push SETs
(``POST /-/push``), reads what a poller acknowledged (``GET /-/polled``) or sets the stream's
status (``POST /-/status``). ``start_transmitter`` (a fixture) starts it on a free loopback
port with fresh tokens and stops it by PID; :class:`RunningTransmitter` drives it.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningTransmitter:
    issuer: str
    management_token: str
    control_token: str
    process: subprocess.Popen[bytes]

    async def push(self, **order: Any) -> tuple[int, str]:
        """Have the transmitter push one SET; the receiver's status and body."""
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{self.issuer}/-/push", json=order,
                                   headers={"Authorization": f"Bearer {self.control_token}"}) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
        return int(answer["status"]), str(answer["body"])

    async def polled(self) -> dict[str, Any]:
        """What the receiver acknowledged and reported as errors, and what is still queued."""
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{self.issuer}/-/polled",
                                  headers={"Authorization": f"Bearer {self.control_token}"}) as response:
                answer = await response.json()
                assert isinstance(answer, dict)
                return answer

    async def set_status(self, status: str) -> None:
        """What its status endpoint answers from now on (enabled, paused, disabled)."""
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{self.issuer}/-/status", json={"status": status},
                                   headers={"Authorization": f"Bearer {self.control_token}"}) as response:
                assert response.status == 204

    async def stream(self) -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{self.issuer}/ssf/stream",
                                  headers={"Authorization": f"Bearer {self.management_token}"}) as response:
                return await response.json() if response.status == 200 else None


TransmitterFactory = Callable[[], Awaitable[RunningTransmitter]]


@pytest.fixture
async def start_transmitter() -> AsyncIterator[TransmitterFactory]:
    from tests.conftest import free_port

    started: list[RunningTransmitter] = []

    async def start() -> RunningTransmitter:
        port = free_port()
        management, control = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        # --name=value: a token may begin with "-", which argparse would read as an option.
        process = subprocess.Popen([sys.executable, "-m", "ztproxy.demo.transmitter", f"--port={port}",
                                    f"--token={management}", f"--control-token={control}"], cwd=REPO)
        transmitter = RunningTransmitter(f"http://127.0.0.1:{port}", management, control, process)
        started.append(transmitter)
        async with asyncio.timeout(15):
            while True:
                try:
                    async with aiohttp.ClientSession() as client:
                        async with client.get(f"{transmitter.issuer}/jwks") as response:
                            if response.status == 200:
                                return transmitter
                except aiohttp.ClientError:
                    pass
                assert process.poll() is None, "the transmitter exited"
                await asyncio.sleep(0.05)

    yield start
    for transmitter in started:
        if transmitter.process.poll() is None:
            transmitter.process.terminate()
            transmitter.process.wait(timeout=10)

