"""Property-based tests of every operator HTTP route (schemathesis) against the real app.

The real FastAPI app, in process (``schemathesis.openapi.from_asgi``), over real
registries on disk: a signed device registry and a cloud registry with two
versions each. Every operation in the OpenAPI document gets generated valid and
invalid requests, as an operator, without a token, with a device token, and on
a server with no auth secret at all; every response must be no 5xx and conform
to the document (status code, content type, headers, body schema), and the
fuzzer must reach the handlers (200s, 404s, 409s), not only the auth wall.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from dcrec.cloud.models.backends import load_generator  # noqa: E402
from dcrec.cloud.models.generator import CandidateGenerator  # noqa: E402
from dcrec.cloud.releases.registry import CloudModelRegistry, ModelRegistry  # noqa: E402
from dcrec.cloud.releases.signing import Signer  # noqa: E402
from dcrec.cloud.serving.auth import TokenAuthority  # noqa: E402
from dcrec.cloud.serving.events import DeviceEventLog  # noqa: E402
from dcrec.cloud.serving.http.app import OpsState, create_app  # noqa: E402
from dcrec.cloud.serving.metrics import Telemetry  # noqa: E402
from dcrec.cloud.serving.service import CandidateService  # noqa: E402

EXAMPLES = 20  # per operation and generation mode: the module runs in well under a minute
AUTH = TokenAuthority(b"a" * 32)


class Loaded:
    """The cloud loader: each registry version is loaded once, then handed out again."""

    def __init__(self) -> None:
        self.cache: dict[Path, CandidateGenerator] = {}

    def __call__(self, path: Path) -> CandidateGenerator:
        if path not in self.cache:
            self.cache[path] = load_generator(path)
        return self.cache[path]


def make_state(root: Path, cloud_model_dir: Path, device_model_dir: Path,
               authority: TokenAuthority | None) -> OpsState:
    devices = ModelRegistry(root / "devices", Signer.generate())
    config = json.loads((device_model_dir / "model.json").read_text())
    devices.publish(device_model_dir / "model.onnx", config, version="d1")
    devices.publish(device_model_dir / "model.onnx", config, version="d2")  # something to roll back
    clouds = CloudModelRegistry(root / "clouds")
    clouds.publish(cloud_model_dir, version="c1")
    clouds.publish(cloud_model_dir, version="c2")
    loader = Loaded()
    return OpsState(service=CandidateService(loader(clouds.path("c2"))), telemetry=Telemetry(),
                    events=DeviceEventLog(), device_registry=devices, cloud_registry=clouds,
                    authority=authority, load_generator=loader, max_body_bytes=4096)


def fuzz(state: OpsState, headers: dict[str, str], unavailable: bool = False) -> set[int]:
    """Every operation, valid and invalid requests, every check; returns the status codes seen.

    ``unavailable``: a documented 503 is the right answer (a registry is torn), not a failure.
    """
    excluded = [not_a_server_error] if unavailable else []
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(state))
    seen: set[int] = set()
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} == {
        "/healthz", "/readyz", "/metrics", "/api/fleet", "/api/models",
        "/api/models/{kind}/promote", "/api/models/{kind}/rollback"}
    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE]
        if any(True for _ in operation.iter_parameters()) or operation.body:
            modes.append(schemathesis.GenerationMode.NEGATIVE)  # nothing to get wrong otherwise
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                response = case.call(headers=headers)
                seen.add(response.status_code)
                assert response.status_code < 500 or (unavailable and response.status_code == 503)
                case.validate_response(response, headers=headers,  # schemathesis's default checks
                                       excluded_checks=excluded)

            run()
    return seen


MODES: dict[str, tuple[TokenAuthority | None, Callable[[], dict[str, str]], set[int]]] = {
    "operator token": (AUTH, lambda: {"Authorization": f"Bearer {AUTH.issue('alice', 3600, 'operator')}"},
                       {200, 404, 422}),
    "no token": (AUTH, dict, {200, 401}),
    "device token": (AUTH, lambda: {"Authorization": f"Bearer {AUTH.issue('phone', 3600)}"},
                     {200, 403}),
    "no auth secret": (None, dict, {200, 404, 422}),
    "torn device registry": (None, dict, {200, 503}),  # RELEASE.json garbage: 503, never 500
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_route_answers_within_its_schema(mode: str, tmp_path: Path, cloud_model_dir: Path,
                                                device_model_dir: Path) -> None:
    authority, headers, expected = MODES[mode]
    state = make_state(tmp_path, cloud_model_dir, device_model_dir, authority)
    assert state.device_registry is not None
    torn = mode.startswith("torn")
    if torn:
        (state.device_registry.root / "RELEASE.json").write_text('{"version": "d2", "seq')
    seen = fuzz(state, headers(), torn)  # raises schemathesis's report at the first failing check
    assert not {s for s in seen if s >= 500 and s != 503}
    assert expected <= seen, seen  # the fuzzer got where it should: past auth, or stopped at it
    if not torn:
        assert 503 not in seen and state.device_registry.current() is not None
