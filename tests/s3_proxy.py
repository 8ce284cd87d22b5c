"""A TCP proxy between S3 clients and the S3 server (moto), in a process of its own, that a test
switches off for N seconds: object storage unreachable for a while, without losing what the
server holds (moto keeps its buckets in memory: killing it would lose them).

    proxy = start_proxy(s3_server.endpoint, workdir)   # clients use proxy.endpoint
    proxy.outage(5)     # from now: connections refused, open ones dropped; back by itself in 5 s
    proxy.outage(None)  # down until `proxy.outage(0)` (= up now)
    proxy.stop()        # by pid

While down it does not listen at all (a new connection is refused, as by a server that is
restarting) and aborts every open connection (pooled keep-alive connections break mid-use).
The switch is a signal (SIGUSR1) plus a control file holding the seconds, so the outage's end
is the proxy's own timer, not the test's: the test only starts a read or an upload and waits
for it. Run as a script: `python tests/s3_proxy.py LISTEN_PORT TARGET_PORT CONTROL_FILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class _Proxy:
    def __init__(self, port: int, target: int, control: Path) -> None:
        self.port, self.target, self.control = port, target, control
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.reopen: asyncio.TimerHandle | None = None

    async def up(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(
                self.handle, HOST, self.port, reuse_address=True
            )

    def down(self, seconds: float) -> None:
        """Stop listening, drop every open connection; listen again after `seconds` (< 0:
        never, until the next switch)."""
        if self.reopen is not None:
            self.reopen.cancel()
            self.reopen = None
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.open):
            writer.transport.abort()
        self.open.clear()
        if seconds >= 0:
            loop = asyncio.get_running_loop()
            self.reopen = loop.call_later(seconds, lambda: loop.create_task(self.up()))

    def switch(self) -> None:
        text = self.control.read_text().strip()
        seconds = float(text) if text else -1.0
        if seconds == 0:
            self.down(-1)
            asyncio.get_running_loop().create_task(self.up())
        else:
            self.down(seconds)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self.open |= pair
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self.open -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(port: int, target: int, control: Path) -> None:
    proxy = _Proxy(port, target, control)
    await proxy.up()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.switch)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    await stop


@dataclass
class Proxy:
    """The running proxy: `endpoint` for clients, `outage(seconds)` to cut them off."""

    endpoint: str
    port: int
    proc: subprocess.Popen
    control: Path

    def outage(self, seconds: float | None) -> None:
        """Unreachable from now for `seconds` (None: until `outage(0)`; 0: reachable now).
        Returns once the proxy has switched (its port closed, or open again for 0)."""
        self.control.write_text("-1" if seconds is None else str(seconds))
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while _port_open(self.port) != (seconds == 0):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the S3 proxy (pid {self.proc.pid}) did not switch")
            time.sleep(0.02)

    def stop(self) -> None:
        from tests.services import stop_process

        stop_process(self.proc)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def start_proxy(target_endpoint: str, workdir: Path) -> Proxy:
    """The proxy in front of `target_endpoint` (http://127.0.0.1:PORT), on a free port."""
    from tests.services import free_port, wait_until

    port, target = free_port(), int(target_endpoint.rsplit(":", 1)[1])
    control, log = Path(workdir) / "proxy-control", Path(workdir) / "proxy.log"
    control.write_text("0")
    proc = subprocess.Popen(
        [sys.executable, __file__, str(port), str(target), str(control)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until("S3 proxy", lambda: _port_open(port), proc, log, 30)
    return Proxy(f"http://{HOST}:{port}", port, proc, control)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
