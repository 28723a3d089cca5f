"""The checked-in stubs must be exactly what the generator makes from protos/."""

from pathlib import Path

import pytest

from dcrec.shared import protogen


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = protogen.generate(tmp_path)
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        checked_in = protogen.OUT_ROOT / rel
        assert checked_in.is_file(), f"{rel} is missing: run python -m dcrec.shared.protogen"
        assert checked_in.read_text() == path.read_text(), (
            f"{rel} is stale: run python -m dcrec.shared.protogen")
