"""gRPC server reflection: off by default, on with ``--reflection``, no token needed, counted sanely.

Real servers on loopback (one in process, one ``dcrec cloud serve`` child) and
the reflection client grpcurl's ``list``/``describe`` rely on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.auth import TokenAuthority
from dcrec.cloud.serving.server import SERVICE_NAME, CloudServer, ServerConfig, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.shared.contract import CandidatesRequest
from dcrec.shared.convert import request_to_pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc
from dcrec.simulator.cloudproc import CloudProcess

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


def start(cloud_model_dir: Path, reflection: bool, authority: TokenAuthority | None = None
          ) -> CloudServer:
    return build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                        config=ServerConfig(insecure=True, reflection=reflection),
                        authority=authority).start()


@pytest.fixture(scope="module")
def authority() -> TokenAuthority:
    return TokenAuthority(os.urandom(32))


@pytest.fixture(scope="module")
def on(cloud_model_dir: Path, authority: TokenAuthority) -> Iterator[CloudServer]:
    cs = start(cloud_model_dir, True, authority)
    yield cs
    cs.stop(0)


def list_services(channel: grpc.Channel) -> list[str]:
    """What ``grpcurl list`` asks: one ServerReflectionInfo stream, list_services."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    return sorted(s.name for s in answers[0].list_services_response.service)


def test_reflection_lists_and_describes_the_services_without_a_token(on: CloudServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{on.port}") as channel:
        assert list_services(channel) == sorted([SERVICE_NAME, HEALTH, REFLECTION])
        db = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(db.get_services()) == sorted([SERVICE_NAME, HEALTH, REFLECTION])
        proto = db.FindFileContainingSymbol(SERVICE_NAME)
        assert proto.name == "dcrec/v1/recommend.proto" and proto.package == "dcrec.v1"
        service = DescriptorPool(db).FindServiceByName(SERVICE_NAME)
        assert {m.name for m in service.methods} == {"GetCandidates", "GetDeviceModel",
                                                     "ReportTelemetry"}
        assert service.methods_by_name["GetCandidates"].input_type.full_name == \
            "dcrec.v1.GetCandidatesRequest"


def test_device_calls_still_need_a_token_beside_reflection(on: CloudServer,
                                                           authority: TokenAuthority) -> None:
    req = request_to_pb(CandidatesRequest("d1", np.array([3]), np.array([1.0]), 5))
    with grpc.insecure_channel(f"127.0.0.1:{on.port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetCandidates(req, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = authority.issue("d1", 60)
        resp = stub.GetCandidates(req, timeout=5, metadata=(("authorization", f"Bearer {token}"),))
        assert len(resp.item_ids) == 5


def test_reflection_streams_add_no_metric_series(on: CloudServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{on.port}") as channel:
        for _ in range(3):
            list_services(channel)
    page = on.telemetry.render()
    assert 'method="other"' not in page
    assert 'method="ServerReflectionInfo"' not in page  # a stream: the unary counters skip it


def test_reflection_is_off_by_default_and_the_refusal_is_counted(cloud_model_dir: Path) -> None:
    cs = start(cloud_model_dir, False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{cs.port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                list_services(channel)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        page = cs.telemetry.render()
        assert ('dcrec_grpc_requests_total{code="UNIMPLEMENTED",method="ServerReflectionInfo"} 1.0'
                in page)
        assert 'method="other"' not in page
    finally:
        cs.stop(0)


def test_serve_flag_turns_reflection_on(cloud_model_dir: Path) -> None:
    with CloudProcess(cloud_model_dir, extra_args=["--reflection"]) as proc, \
            grpc.insecure_channel(proc.address) as channel:
        assert SERVICE_NAME in list_services(channel)


def test_the_proto_ships_in_the_package() -> None:
    """What OPERATIONS.md tells grpcurl users to pass to -import-path/-proto."""
    proto = resources.files("dcrec.protos") / "dcrec/v1/recommend.proto"
    text = proto.read_text(encoding="utf-8")
    assert "package dcrec.v1;" in text and "service Recommender" in text
