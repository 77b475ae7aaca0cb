"""The transport floor: a grpc.aio server that answers ServerLive and nothing else, in a child process.

    python bench/lean_grpc.py        # prints its port, serves until killed

bench_runtime times edgecam's ServerLive against this one in the same run: what remains of the
gRPC round trip once edgecam's own work (budget, decoding, executor hop) is gone is the price of
Python gRPC on this machine, which no change to edgecam's servicers can lower.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc


class _Live(oip_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request: oip.ServerLiveRequest, context: object) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)


async def _serve() -> None:
    server = grpc.aio.server()
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(_Live(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def start() -> tuple[subprocess.Popen[str], str]:
    """The lean server as a child process and its address; the caller kills it."""
    process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    if not port.isdigit():
        process.kill()
        raise RuntimeError(f"the lean gRPC server did not start (printed {port!r})")
    return process, f"127.0.0.1:{port}"


if __name__ == "__main__":
    asyncio.run(_serve())
