"""Simulator benchmark: the fakes must never be what limits a load test.

    python -m bench.simulator --messages 100000 --reports 20000

1. The fake Mitto accepting messages in bulks of 500 (8 requests in flight), ledger written for each:
   messages/s. Target: at least 20,000.
2. The fake Mitto delivering delivery reports (an intermediate and a final per message) to a receiver
   that answers 200 at once: reports/s from the first acceptance until every report is acknowledged.
   Target: at least 2,000. Beside it, the same receiver driven directly by the benchmark's own lean
   client: the receiver's ceiling, so the ratio shows whose limit the figure is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT
from bench.loadgen import request_bytes, run_load
from chaos.processes import ManagedProcess
from service.embedded_redis import free_port


class FastReceiver:
    """An HTTP/1.1 server on raw asyncio streams that answers every POST with 200 `{}`."""

    def __init__(self) -> None:
        self.count = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                self.count += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
                )
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def stop(self) -> None:
        if self.server:
            self.server.close()


def start_simulator(data_dir: Path, target: str | None) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [sys.executable, "-m", "simulator", "--port", str(port), "--data-dir", str(data_dir)]
    argv += ["--dlr-delay-ms", "0"]
    if target:
        argv += ["--target", target]
    process = ManagedProcess(
        "simulator",
        argv,
        data_dir / "simulator.log",
        ready_url=f"http://127.0.0.1:{port}/control/health",
        cwd=ROOT,
    )
    process.start()
    process.wait_ready()
    return process, f"127.0.0.1:{port}"


def bulks(count: int, host: str, prefix: str) -> list[bytes]:
    requests = []
    for start in range(0, count, 500):
        messages = [
            {"from": "Bench", "to": f"+1{2015550000 + i}", "text": "Benchmark", "reference": f"{prefix}{i}"}
            for i in range(start, min(count, start + 500))
        ]
        body = json.dumps({"messages": messages}).encode()
        head = request_bytes("POST", "/mitto/api/v1.1/Messages/sendmessagesbulk", host, body)
        requests.append(head.replace(b"Host:", b"X-Mitto-API-Key: lab-mitto-key\r\nHost:", 1))
    return requests


async def accept_rate(messages: int, tmp: Path) -> float:
    process, host = start_simulator(tmp / "accept", None)
    try:
        requests = bulks(messages, host, "a")
        result = await run_load("127.0.0.1", int(host.split(":")[1]), requests, 8)
        assert set(result.statuses) == {200}, result.statuses
        return messages / result.seconds
    finally:
        process.stop()


async def report_rate(messages: int, tmp: Path) -> tuple[float, float]:
    receiver = FastReceiver()
    port = await receiver.start()
    ceiling_requests = [request_bytes("POST", "/x", f"127.0.0.1:{port}", b"{}")] * (messages * 2)
    ceiling = await run_load("127.0.0.1", port, ceiling_requests, 64)
    receiver.count = 0
    process, host = start_simulator(tmp / "reports", f"http://127.0.0.1:{port}")
    try:
        started = time.perf_counter()
        await run_load("127.0.0.1", int(host.split(":")[1]), bulks(messages, host, "r"), 4)
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient() as client:
            while receiver.count < messages * 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            counters = (await client.get(f"http://{host}/control/deliveries")).json()
        elapsed = time.perf_counter() - started
        assert counters["acknowledged"] == messages * 2, counters
        return messages * 2 / elapsed, len(ceiling_requests) / ceiling.seconds
    finally:
        process.stop()
        await receiver.stop()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="smslab-bench-sim-") as tmp_name:
        tmp = Path(tmp_name)
        accepted = await accept_rate(args.messages, tmp)
        reports, ceiling = await report_rate(args.reports // 2, tmp)
    print(f"\nsimulator: {args.messages} messages in bulks of 500; {args.reports} delivery reports")
    print(f"fake Mitto accepts          {accepted:>9.0f} messages/s   (target 20,000)")
    print(
        f"fake Mitto delivers reports {reports:>9.0f} reports/s    (target 2,000); "
        f"the receiver alone takes {ceiling:.0f}/s: ratio {reports / ceiling:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--reports", type=int, default=20_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
