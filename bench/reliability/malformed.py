"""Generated malformed requests against a real `edgecam serve` process: statuses, liveness, RSS, fds.

The server runs the bundled Fashion-MNIST model on a synthetic camera. After a warm-up (so that
allocations made once, by the first requests of each kind, are not counted as growth), hypothesis
generates `--malformed-requests` ModelInferRequests (bench/reliability/oip_requests.py: valid ones
and ones wrong in one or more ways), sent one by one over ModelInfer, and a tenth as many again in
ModelStreamInfer streams of ten. Every answer's status is counted; the server process's RSS and open
fds are read before and after, and the camera's frame count must still be rising at the end.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from random import Random
from typing import Any

import grpc
import psutil
from hypothesis import HealthCheck, Phase, given, settings

from edgecam.models import fashion_cnn
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.launcher import RunningServer, launch

from . import target
from .oip_requests import Target, infer_requests

WARM_UP = 300
STREAM_LENGTH = 10
UNPARSEABLE = 200
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "UNAVAILABLE"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--malformed-requests", type=int, default=10_000, help="generated unary requests (--quick: 1000)"
    )


def _generate(target: Target, count: int, send: Any) -> None:
    """Call `send(request)` on `count` generated requests: generation only, no shrinking or replay."""

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(infer_requests(target))
    def each(request: oip.ModelInferRequest) -> None:
        send(request)

    each()


def _unparseable(channel: grpc.Channel, count: int) -> Counter[str]:
    """`count` random byte strings sent as ModelInfer requests, bypassing the protobuf serializer."""
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    statuses: Counter[str] = Counter()
    random = Random(0)
    for _ in range(count):
        payload = bytes([0x0A, 0x05]) + random.randbytes(random.randrange(1, 64))  # field 1, length 5, junk
        try:
            call(payload, timeout=10)
            statuses["OK"] += 1
        except grpc.RpcError as exc:
            statuses[exc.code().name] += 1
    return statuses


def _usage(process: psutil.Process) -> dict[str, float]:
    return {"rss_mb": round(process.memory_info().rss / 2**20, 2), "fds": process.num_fds()}


def _camera(channel: grpc.Channel) -> v1.CameraStatus:
    return v1_grpc.CameraServiceStub(channel).ListCameras(v1.ListCamerasRequest(), timeout=5).cameras[0]


def _examine(server: RunningServer, count: int) -> dict[str, Any]:
    process = psutil.Process(server.process.pid)
    unary: Counter[str] = Counter()
    streamed: Counter[str] = Counter()
    multi_line = 0
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(oip.ModelMetadataRequest(name="fashion_cnn"), timeout=10)
        spec = meta.inputs[0]
        target = Target(
            meta.name, spec.name, spec.datatype, tuple(spec.shape), tuple(o.name for o in meta.outputs)
        )

        def send(request: oip.ModelInferRequest, tally: Counter[str] = unary) -> None:
            nonlocal multi_line
            try:
                stub.ModelInfer(request, timeout=10)
                tally["OK"] += 1
            except grpc.RpcError as exc:
                tally[exc.code().name] += 1
                multi_line += "\n" in (exc.details() or "")

        _generate(target, WARM_UP, lambda r: send(r, Counter()))
        camera_before, before = _camera(channel), _usage(process)
        started = time.perf_counter()
        _generate(target, count, send)
        unary_s = time.perf_counter() - started

        batch: list[oip.ModelInferRequest] = []

        def stream(request: oip.ModelInferRequest) -> None:
            nonlocal multi_line
            batch.append(request)
            if len(batch) < STREAM_LENGTH:
                return
            for index, message in enumerate(batch):
                message.id = str(index)
            try:
                replies = list(stub.ModelStreamInfer(iter(batch), timeout=30))
            except grpc.RpcError as exc:
                streamed[f"stream ended: {exc.code().name}"] += 1
                replies = []
            streamed["unanswered"] += len(batch) - len(replies)
            for reply in replies:
                message = reply.error_message
                streamed["error" if message else "OK"] += 1
                streamed["internal error"] += message.startswith("internal error")
                multi_line += "\n" in message
            batch.clear()

        _generate(target, count // STREAM_LENGTH, stream)
        time.sleep(1.0)  # one second of camera frames after the last request
        camera_after, after = _camera(channel), _usage(process)
        live = stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
        tracebacks = sum("Traceback" in line for line in server.log)
        unparseable = _unparseable(channel, UNPARSEABLE)  # last: gRPC logs a traceback for each
    return {
        "unary_requests": sum(unary.values()),
        "unary_statuses": dict(unary.most_common()),
        "unary_seconds": round(unary_s, 1),
        "stream_messages": sum(v for k, v in streamed.items() if k in ("OK", "error")),
        "stream_answers": dict(streamed.most_common()),
        "multi_line_messages": multi_line,
        # Bytes that are no ModelInferRequest at all: gRPC's own deserializer answers before edgecam
        # runs (INTERNAL "Exception deserializing request!"); recorded, not part of the targets.
        "unparseable_requests": UNPARSEABLE,
        "unparseable_statuses": dict(unparseable.most_common()),
        "server_errors": sum(unary[c] for c in SERVER_ERRORS) + streamed["internal error"],
        "tracebacks_in_log": tracebacks,
        "server_live_after": bool(live and server.process.poll() is None),
        "before": before,
        "after": after,
        "rss_growth_pct": round(100 * (after["rss_mb"] / before["rss_mb"] - 1), 2),
        "fds_growth_pct": round(100 * (after["fds"] / before["fds"] - 1), 2),
        "camera_frames_during": camera_after.frames_inferred - camera_before.frames_inferred,
        "camera_up_after": camera_after.up,
        "camera_fps_after": round(camera_after.fps, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    count = 1000 if args.quick else args.malformed_requests
    server = launch(["--model", str(fashion_cnn.onnx_path()), "--camera", "cam=synthetic:fps=10"])
    try:
        figures = _examine(server, count)
    finally:
        exit_code = server.stop()
    figures["server_exit_code"] = exit_code
    tried = figures["unary_requests"] + figures["stream_messages"]
    figures["targets"] = [
        target("malformed requests tried", tried, ">=", 1000 if args.quick else 10_000, "requests"),
        target(
            "answered INTERNAL/UNKNOWN/UNAVAILABLE/DEADLINE_EXCEEDED",
            figures["server_errors"],
            "==",
            0,
            "requests",
        ),
        target(
            "stream messages left unanswered",
            figures["stream_answers"].get("unanswered", 0),
            "==",
            0,
            "messages",
        ),
        target("status messages of more than one line", figures["multi_line_messages"], "==", 0, "messages"),
        target("tracebacks in the server log", figures["tracebacks_in_log"], "==", 0, "lines"),
        target("server live after", int(figures["server_live_after"]), "==", 1, "bool"),
        target("server RSS growth after the requests", figures["rss_growth_pct"], "<=", 5, "%"),
        target("server open fds growth after the requests", figures["fds_growth_pct"], "<=", 5, "%"),
        target("camera frames inferred meanwhile", figures["camera_frames_during"], ">", 0, "frames"),
    ]
    return figures
