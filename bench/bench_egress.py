"""The egress proxy's cost (issue 20): a 100 MB download and 200 short request/response
connections, straight to a server and through the proxy, in the same run. Everything is on
loopback in three processes (server, proxy, client), so the figures are what the proxy itself
adds: the extra hop, reading the ClientHello, the policy and the name lookup (cached after
the first), and copying the bytes. The client sends a real ClientHello (made by Python's
ssl) and the server answers it with plain bytes: the TLS handshake itself costs the same
either way and is left out. No container, no nft rule: the proxy is told the original
destination, as the redirect would tell it.

Run alone: `.venv/bin/python -m bench.run egress`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import Figure, percentile

DOWNLOAD = 100 * 1024 * 1024
SMALL = 200
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def client_hello(name: str) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# ---------------------------------------------------------------------- the two servers
def serve_upstream() -> None:
    """Reads a ClientHello; "big" in it (the SNI) gets DOWNLOAD bytes, anything else REPLY."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        if b"big.bench.test" in first:
            block = bytes(1024 * 1024)
            for _ in range(DOWNLOAD // len(block)):
                writer.write(block)
                await writer.drain()
        else:
            writer.write(REPLY)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def serve_proxy(upstream_port: int) -> None:
    from coi_tui.network.egress.policy import EgressPolicy, parse_pattern
    from coi_tui.network.egress.proxy import EgressProxy

    policy = EgressPolicy(
        "allowlist", [parse_pattern(f"*.bench.test:{upstream_port}")], allow_local=True
    )

    class One:
        def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
            return ("bench", policy)

        def policy(self, container: str) -> EgressPolicy | None:
            return policy

    async def main() -> None:
        proxy = EgressProxy(
            One(),
            lambda name: (["127.0.0.1"], 300),
            lambda record: None,
            ("127.0.0.1", 0),
            destination=lambda sock: ("203.0.113.1", upstream_port),
            may_dial=lambda address, policy, own: True,  # the "internet" is loopback here
        )
        print(await proxy.start(), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------------- the client
def download(port: int, hello: bytes) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(hello)
        got = 0
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    elapsed = time.perf_counter() - started
    if got != DOWNLOAD:
        raise RuntimeError(f"downloaded {got} bytes, not {DOWNLOAD}")
    return elapsed


def small(port: int, hello: bytes) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if data != REPLY:
        raise RuntimeError(f"unexpected reply {data[:60]!r}")
    return time.perf_counter() - started


def start(role: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_egress", role, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def run(budget_s: float = 120) -> list[Figure]:
    upstream, up_port = start("upstream")
    proxy, proxy_port = start("proxy", str(up_port))
    try:
        big, short = client_hello("big.bench.test"), client_hello("small.bench.test")
        small(proxy_port, short)  # the name lookup's first (uncached) call
        direct_dl = [download(up_port, big) for _ in range(3)]
        proxied_dl = [download(proxy_port, big) for _ in range(3)]
        direct_small, proxied_small = [], []
        for _ in range(SMALL):  # interleaved: the machine's noise hits both alike
            direct_small.append(small(up_port, short))
            proxied_small.append(small(proxy_port, short))
    finally:
        for proc in (proxy, upstream):
            proc.kill()
            proc.wait()
    mb = DOWNLOAD / 1e6
    direct_rate = mb / statistics.median(direct_dl)
    proxied_rate = mb / statistics.median(proxied_dl)
    added = [(p - d) * 1000 for p, d in zip(proxied_small, direct_small, strict=True)]
    extra: dict[str, Any] = {
        "direct_small_p50_ms": round(percentile(direct_small, 50) * 1000, 3),
        "proxied_small_p50_ms": round(percentile(proxied_small, 50) * 1000, 3),
        "proxied_small_p95_ms": round(percentile(proxied_small, 95) * 1000, 3),
    }
    return [
        Figure("egress_direct_download_MBps", direct_rate, "MB/s", 3, target="(baseline)"),
        Figure("egress_proxied_download_MBps", proxied_rate, "MB/s", 3),
        Figure(
            "egress_download_ratio",
            proxied_rate / direct_rate,
            "x",
            3,
            target=">= 0.8",
            met=proxied_rate / direct_rate >= 0.8,
            baseline="egress_direct_download_MBps",
        ),
        Figure(
            "egress_added_latency_p50_ms",
            statistics.median(added),
            "ms",
            SMALL,
            min(added),
            max(added),
            target="< 2",
            met=statistics.median(added) < 2,
            extra=extra,
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        serve_upstream()
    elif sys.argv[1] == "proxy":
        serve_proxy(int(sys.argv[2]))
    else:
        print(json.dumps([f.as_dict() for f in run()], indent=1))
