"""Every file the device reads, damaged: the store, the installed model, the pointer, the
neighbour index, a release. Nothing escapes but the documented DeviceDataError types, a
damaged store is never silently replaced by an empty one, and a bad release never costs
the device the model it runs. Also: item ids the model cannot score are refused before
they are stored (one such event used to break every later inference, for good).

Real files throughout: SQLite stores written by DeviceStore, ONNX models run by ONNX
Runtime (a tiny embedding model built with ``onnx``), neighbour indexes built from a
real co-occurrence cloud model, releases served by the real gRPC server on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcrec.cloud.models.backends import load_generator, train
from dcrec.cloud.models.neighbours import build
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.server import CloudServer, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import CloudClient
from dcrec.device.migrations import SCHEMA_VERSION
from dcrec.device.policy import NeverPolicy
from dcrec.device.reranker import ModelLoadError, OnnxReranker
from dcrec.device.runtime import DeviceRuntime
from dcrec.device.store import CachedList, DeviceStore, StoreError
from dcrec.device.updates import POINTER, ModelRejected, install, load_installed, update
from dcrec.shared.cli import main as dcrec
from dcrec.shared.contract import DeviceModel, manifest_bytes
from dcrec.shared.data import load_sequences
from dcrec.shared.errors import DeviceDataError
from dcrec.shared.neighbours import NeighbourIndex, NeighbourIndexError

N_ITEMS = 40
MAX_LEN = 20
SMALL = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- real files to damage -------------------------------------------------------------------------
def tiny_onnx(n_items: int = N_ITEMS, dim: int = 8, seed: int = 0) -> bytes:
    """A real scorer: mean of the history's embeddings dotted with each candidate's, (B, C)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    emb = numpy_helper.from_array(rng.normal(size=(n_items + 1, dim)).astype(np.float32), "emb")
    axis = numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")
    nodes = [helper.make_node("Gather", ["emb", "history"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["u"], axes=[1], keepdims=1),
             helper.make_node("Transpose", ["u"], ["ut"], perm=[0, 2, 1]),
             helper.make_node("Gather", ["emb", "candidates"], ["c"]),
             helper.make_node("MatMul", ["c", "ut"], ["s"]),
             helper.make_node("Squeeze", ["s", "axis"], ["scores"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("history", TensorProto.INT64, ["B", "L"]),
                        helper.make_tensor_value_info("candidates", TensorProto.INT64, ["B", "C"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "C"])], [emb, axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class Files:
    onnx: bytes
    config: dict[str, object]
    index: bytes  # a neighbour index file of the cloud model below
    cloud_dir: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    lines = ["u0 " + " ".join(f"i{i}" for i in range(1, N_ITEMS + 1))]  # every item appears
    lines += [f"u{u} " + " ".join(f"i{x}" for x in rng.integers(1, N_ITEMS + 1, 12)) for u in range(1, 30)]
    (root / "data").mkdir()
    (root / "data" / "sequences.txt").write_text("\n".join(lines) + "\n")
    ds = load_sequences(root / "data")
    train("cooccurrence", ds, [ds.sequence(u) for u in range(ds.n_users)], root / "cloud")
    index = build(load_generator(root / "cloud"), neighbours=5)
    assert ds.n_items == index.n_items == N_ITEMS
    return Files(tiny_onnx(), {"max_len": MAX_LEN, "n_items": N_ITEMS}, index.to_bytes(), root / "cloud")


def release(files: Files, version: str, sequence: int, onnx: bytes | None = None,
            index: bytes | None = None, manifest: bytes | None = None) -> DeviceModel:
    """An unsigned release (a device without signing keys); the index announced by its digest."""
    onnx = files.onnx if onnx is None else onnx
    config = dict(files.config)
    if index:
        config["neighbours_sha256"] = hashlib.sha256(index).hexdigest()
    sha = hashlib.sha256(onnx).hexdigest()
    return DeviceModel(version, onnx, sha, config, sequence,
                       manifest_bytes(version, sequence, sha, config) if manifest is None else manifest,
                       neighbours=index or b"")


class Served:
    """Stands in for the registry behind the real server: hands out exactly the release set."""

    def __init__(self, model: DeviceModel) -> None:
        self.model = model

    def current(self) -> DeviceModel:
        return self.model


@pytest.fixture
def cloud(files: Files) -> Iterator[tuple[CloudServer, Served, CloudClient]]:
    served = Served(release(files, "m1", 1))
    cs = build_server("127.0.0.1:0", CandidateService(load_generator(files.cloud_dir)),
                      served).start()  # type: ignore[arg-type]
    client = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=10)
    yield cs, served, client
    client.close()
    cs.server.stop(0)


def filled_store(path: Path, events: int = 600, requests: int = 60) -> list[tuple[int, float]]:
    """A store as a device leaves it: events, consumed items, requests, outbox, state, a list."""
    s = DeviceStore(path)
    items = np.arange(events) % N_ITEMS + 1
    s.append_many(items, np.arange(events, dtype=np.float64))
    for i in range(requests):
        s.log_request(float(i), "disagreement", True, 3.0, f"L{i}")
    s.save_list(CachedList(np.arange(1, 21), np.linspace(1, 0, 20).astype(np.float32), "L", "c", 0.0, 1e9))
    s.set_meta("runtime_state", json.dumps({"alpha": {"alpha": 0.3}}))
    got = s.events()
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    s.close()
    return got


def damaged_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".damaged-" in p.name)


def warned(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    return any(r.levelno == logging.WARNING and all(p in r.getMessage() for p in parts)
               for r in caplog.records)


# --- the store ------------------------------------------------------------------------------------
def test_every_device_data_error_type_keeps_its_old_base() -> None:
    for t, old in ((StoreError, RuntimeError), (ModelLoadError, RuntimeError),
                   (ModelRejected, RuntimeError), (NeighbourIndexError, ValueError)):
        assert issubclass(t, DeviceDataError) and issubclass(t, old), t


def test_a_store_emptied_to_0_bytes_is_moved_aside_with_a_warning_not_opened_empty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "d.sqlite"
    filled_store(path)
    path.write_bytes(b"")
    with pytest.raises(StoreError, match=r"d\.sqlite.*0 bytes"):
        DeviceStore(path, on_damage="raise")
    assert path.stat().st_size == 0 and not damaged_files(path)  # left as it was
    with caplog.at_level(logging.WARNING):
        s = DeviceStore(path)
    assert s.recovery is not None and "0 bytes" in s.recovery.reason
    assert s.recovery.events_kept == 0 and s.recovery.quarantined.stat().st_size == 0
    assert damaged_files(path) == [s.recovery.quarantined]
    assert warned(caplog, str(path), str(s.recovery.quarantined), "0 events")
    s.append(3, 1.0)
    assert s.events() == [(3, 1.0)] and s.integrity_ok()
    s.close()
    assert DeviceStore(path).recovery is None  # the fresh file opens cleanly from now on


def test_junk_in_the_middle_of_the_store_is_quarantined_and_its_readable_events_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "d.sqlite"
    original = filled_store(path, events=3000)
    data = bytearray(path.read_bytes())
    page = 4096
    data[12 * page:13 * page] = np.random.default_rng(1).integers(0, 256, page, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        s = DeviceStore(path)
    rec = s.recovery
    assert rec is not None and rec.quarantined.read_bytes() == bytes(data)  # kept exactly as found
    kept = s.events()
    assert 0 < rec.events_kept == len(kept) == s.event_count() <= len(original)
    assert set(kept) <= set(original) and kept == sorted(kept, key=original.index)  # order kept
    assert kept[-1] == original[-1]  # the newest events survive a page lost in the middle
    assert s.recent(5).tolist() == [i for i, _ in kept[-5:]]
    assert warned(caplog, str(path), str(rec.quarantined), f"keeping {rec.events_kept} events")
    assert s.integrity_ok()


def test_a_store_truncated_to_half_keeps_the_events_it_still_holds(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    original = filled_store(path, events=2000, requests=1500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    s = DeviceStore(path)
    assert s.recovery is not None and "malformed" in s.recovery.reason
    assert s.events() == original  # the events sat in the first half: every one survives
    assert s.seen() == set(range(1, N_ITEMS + 1))
    assert s.get_meta("runtime_state") == json.dumps({"alpha": {"alpha": 0.3}})  # learned state kept


@pytest.mark.parametrize("content", [
    pytest.param(lambda n: np.random.default_rng(2).integers(0, 256, n, dtype=np.uint8).tobytes(), id="random"),
    pytest.param(lambda n: json.dumps({"not": "sqlite"}).encode() * (n // 16), id="json-file"),
    pytest.param(lambda n: b"SQLite format 3\x00" + bytes(n - 16), id="header-then-zeros"),
])
def test_a_file_that_is_no_store_is_quarantined_and_a_fresh_store_opens(tmp_path: Path, content) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "d.sqlite"
    path.write_bytes(content(8192))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=str(path)):
        DeviceStore(path, on_damage="raise")
    s = DeviceStore(path)
    assert s.recovery is not None and s.recovery.events_kept == 0
    assert s.recovery.quarantined.read_bytes() == before
    assert s.event_count() == 0 and s.integrity_ok()


def test_a_store_from_a_newer_runtime_is_refused_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    filled_store(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    for mode in ("quarantine", "raise"):
        with pytest.raises(DeviceDataError, match=r"d\.sqlite.*newer"):
            DeviceStore(path, on_damage=mode)  # type: ignore[arg-type]
    assert path.read_bytes() == before and not damaged_files(path)  # not damage: a newer app's data


def test_damage_while_open_fails_integrity_ok_and_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    filled_store(path)
    s = DeviceStore(path)
    with open(path, "r+b") as f:  # the first table's root page (events), under the running store
        f.seek(4096 + 8)
        f.write(np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8).tobytes())
    other = sqlite3.connect(path)  # another writer: the store's page cache is dropped
    other.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    other.commit()
    other.close()
    assert s.integrity_ok() is False
    with pytest.raises(StoreError, match=r"d\.sqlite"):
        s.events()
    with pytest.raises(StoreError, match=r"d\.sqlite"):
        s.append(1, 1.0)


def test_a_recovered_store_starts_a_new_telemetry_stream_and_reports_itself(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    filled_store(path, requests=30)
    old = DeviceStore(path)
    stream, old_ids = old.telemetry_stream(), [i for i, *_ in old.pending(1000)]
    old.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    s = DeviceStore(path)
    assert s.recovery is not None
    # the fresh outbox numbers from 1 again: under the old stream id the cloud would take
    # its records for ones it already has
    assert s.telemetry_stream() not in ("", stream)
    [(rid, kind, payload)] = s.outbox()
    assert kind == "store_recovered" and payload["events_kept"] == s.recovery.events_kept
    assert rid in old_ids  # (which is why the stream had to change)


def test_a_damaged_runtime_state_or_cached_list_does_not_stop_the_runtime(
        tmp_path: Path, files: Files, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "d.sqlite"
    filled_store(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '{\"alpha\": ' WHERE key = 'runtime_state'")
    conn.execute("UPDATE candidates SET items = x'0102030405'")  # not a whole number of int64s
    conn.commit()
    conn.close()
    rr = OnnxReranker(files.onnx, MAX_LEN, "m1", n_items=N_ITEMS)
    with caplog.at_level(logging.WARNING):
        rt = DeviceRuntime.open(path, rr, None, NeverPolicy())
    assert rt.cached is None and warned(caplog, "cached candidate list unreadable")
    assert warned(caplog, "runtime state unusable")
    rt.record(5, 1e6)
    rt.close()


@st.composite
def damage(draw: st.DrawFn, size: int) -> tuple[list[tuple[int, int]], int]:
    flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), max_size=8))
    keep = draw(st.one_of(st.just(size), st.integers(0, size)))
    return flips, keep


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("small") / "s.sqlite"
    filled_store(path, events=150, requests=20)
    return path.read_bytes()


@SMALL
@given(data=st.data())
def test_random_damage_to_a_store_never_escapes_as_anything_but_store_error(small_store: bytes,
                                                                            data: st.DataObject) -> None:
    flips, keep = data.draw(damage(len(small_store)))
    b = bytearray(small_store)
    for at, value in flips:
        b[at] = value
    damaged = bytes(b[:keep])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.sqlite"
        path.write_bytes(damaged)
        try:
            DeviceStore(path, on_damage="raise").close()
        except StoreError as e:
            assert str(path) in str(e)
        assert path.read_bytes() == damaged  # "raise" never touches the file
        s = DeviceStore(path)  # the default always opens
        if s.recovery is not None:
            assert s.recovery.quarantined.read_bytes() == damaged
        elif keep < len(small_store) // 4:
            pytest.fail("a store cut to a quarter opened as if sound")
        for call in (lambda: s.append(7, 1e6), s.events, s.load_list, lambda: s.pending(10),
                     lambda: s.get_meta("runtime_state"), s.active_model):
            try:
                call()
            except StoreError as e:  # a damaged value found later: named, never raw sqlite3
                assert str(path) in str(e)
        assert isinstance(s.integrity_ok(), bool)
        s.close()


# --- the installed model and its pointer ------------------------------------------------------------
def _installed(tmp_path: Path, files: Files) -> Path:
    d = tmp_path / "model"
    install(release(files, "m1", 1, index=files.index), d)
    return d


def _edit_pointer(d: Path, **changes: object) -> None:
    pointer = json.loads((d / POINTER).read_text())
    for k, v in changes.items():
        if v is None:
            pointer.pop(k, None)
        else:
            pointer[k] = v
    (d / POINTER).write_text(json.dumps(pointer))


HOSTILE_INSTALLS = {
    "pointer not JSON": lambda d, f: (d / POINTER).write_text("{\"file\": "),
    "pointer a JSON list": lambda d, f: (d / POINTER).write_text("[1, 2]"),
    "pointer without file": lambda d, f: _edit_pointer(d, file=None),
    "pointer without sha256": lambda d, f: _edit_pointer(d, sha256=None),
    "pointer names a missing file": lambda d, f: _edit_pointer(d, file="model-9-gone.onnx"),
    "pointer names a file elsewhere": lambda d, f: _edit_pointer(d, file="../d.sqlite"),
    "max_len not a number": lambda d, f: _edit_pointer(d, max_len="fifty"),
    "config not an object": lambda d, f: _edit_pointer(d, config=["n_items", 40]),
    "model file truncated": lambda d, f: (d / json.loads((d / POINTER).read_text())["file"]).write_bytes(f.onnx[:100]),
    "model file damaged, digest rewritten": lambda d, f: (
        (d / "junk.onnx").write_bytes(b"\x08\x07junk"),
        _edit_pointer(d, file="junk.onnx", sha256=hashlib.sha256(b"\x08\x07junk").hexdigest())),
    "catalogue larger than the model": lambda d, f: _edit_pointer(d, config={"max_len": MAX_LEN, "n_items": 4711}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_INSTALLS))
def test_a_damaged_install_is_ignored_with_a_warning_naming_the_file(
        name: str, tmp_path: Path, files: Files, caplog: pytest.LogCaptureFixture) -> None:
    d = _installed(tmp_path, files)
    assert load_installed(d) is not None
    HOSTILE_INSTALLS[name](d, files)
    with caplog.at_level(logging.WARNING):
        assert load_installed(d) is None, name
    assert warned(caplog, str(d / POINTER)), name


def test_after_a_damaged_install_the_device_fetches_a_model_again(tmp_path: Path, files: Files,
                                                                  cloud) -> None:  # type: ignore[no-untyped-def]
    _, served, client = cloud
    d = _installed(tmp_path, files)
    _edit_pointer(d, sha256=None)
    assert load_installed(d) is None
    served.model = release(files, "m1", 1)
    got = update(client, "dev", d, load_installed(d))
    assert got is not None and got.version == "m1"
    again = load_installed(d)
    assert again is not None and again.version == "m1"


@SMALL
@given(changes=st.dictionaries(
    st.sampled_from(["file", "version", "sequence", "sha256", "max_len", "config", "neighbours_file"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                 max_leaves=6),
    min_size=1, max_size=4))
def test_random_pointer_values_never_escape_load_installed(files: Files, changes: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = _installed(Path(tmp), files)
        pointer = json.loads((d / POINTER).read_text())
        pointer.update(changes)
        (d / POINTER).write_text(json.dumps(pointer))
        got = load_installed(d)  # a reranker, or None: never an exception
        assert got is None or isinstance(got, OnnxReranker)
        if got is not None:  # what it serves, it can score
            got.score(np.array([1, 2]), np.array([3, 4]))


def test_a_model_file_that_cannot_be_loaded_names_the_file(tmp_path: Path, files: Files) -> None:
    with pytest.raises(ModelLoadError, match=r"gone\.onnx"):
        OnnxReranker.from_file(tmp_path / "gone.onnx", MAX_LEN)
    (tmp_path / "half.onnx").write_bytes(files.onnx[: len(files.onnx) // 2])
    with pytest.raises(ModelLoadError, match=r"half\.onnx.*cannot load"):
        OnnxReranker.from_file(tmp_path / "half.onnx", MAX_LEN)
    with pytest.raises(ModelLoadError, match="cannot score item 4711"):  # a catalogue it does not have
        OnnxReranker(files.onnx, MAX_LEN, "x", n_items=4711)


# --- the neighbour index --------------------------------------------------------------------------
def _zip(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _meta(files: Files, **meta: object) -> bytes:
    z = np.load(io.BytesIO(files.index))
    m = json.loads(z["meta"].tobytes())
    m.update(meta)
    return _zip(**{"items.npy": _npy(z["items"]), "scores.npy": _npy(z["scores"]),
                   "meta.npy": _npy(np.frombuffer(json.dumps(m).encode(), np.uint8))})


def _flip_in_member(files: Files) -> bytes:
    """One byte of the items array changed: the zip's CRC no longer matches (BadZipFile on read)."""
    data = bytearray(files.index)
    at = files.index.index(b"items.npy") + 200
    data[at] ^= 0xFF
    return bytes(data)


HOSTILE_INDEXES = {
    "truncated": lambda f: f.index[: len(f.index) // 2],
    "random bytes": lambda f: np.random.default_rng(4).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
    "empty": lambda f: b"",
    "zip start, junk after (BadZipFile)": lambda f: f.index[:64] + b"\x00" * 300,
    "bad CRC in a member": _flip_in_member,
    "a zip of something else": lambda f: _zip(**{"readme.txt": b"hello"}),
    "members that are not arrays": lambda f: _zip(**{"items.npy": b"x", "scores.npy": b"y", "meta.npy": b"z"}),
    "a .npy, not an .npz": lambda f: _npy(np.arange(10)),
    "meta n_items not a number": lambda f: _meta(f, n_items="forty"),
    "meta neighbours null": lambda f: _meta(f, neighbours=None),
    "meta not JSON": lambda f: _zip(**{"items.npy": _npy(np.zeros((2, 1), np.int32)),
                                       "scores.npy": _npy(np.zeros((2, 1), np.float16)),
                                       "meta.npy": _npy(np.frombuffer(b"\xff{", np.uint8))}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_INDEXES))
def test_a_damaged_neighbour_index_is_a_neighbour_index_error_naming_the_file(
        name: str, tmp_path: Path, files: Files) -> None:
    path = tmp_path / "n.npz"
    path.write_bytes(HOSTILE_INDEXES[name](files))
    with pytest.raises(NeighbourIndexError) as e:
        NeighbourIndex.load(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value), name


@SMALL
@given(data=st.data())
def test_random_damage_to_a_neighbour_index_is_refused_or_harmless(files: Files, data: st.DataObject) -> None:
    flips, keep = data.draw(damage(len(files.index)))
    b = bytearray(files.index)
    for at, value in flips:
        b[at] = value
    try:
        index = NeighbourIndex.from_bytes(bytes(b[:keep]), "n.npz")
    except NeighbourIndexError as e:
        assert str(e).startswith("n.npz: ")
    else:  # a change the format cannot see (zip metadata) leaves a sound index
        index.local_list(np.array([1, 2, 3]), count=10)


def test_publishing_a_corrupt_neighbour_index_is_a_one_line_cli_error(
        tmp_path: Path, files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.onnx").write_bytes(files.onnx)
    (tmp_path / "model.json").write_text(json.dumps(files.config))
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(files.index[:64] + b"\x00" * 300)  # zipfile.BadZipFile inside
    rc = dcrec(["cloud", "publish", "--registry", str(tmp_path / "reg"), "--model",
                str(tmp_path / "model.onnx"), "--config", str(tmp_path / "model.json"),
                "--neighbours", str(bad)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("dcrec: error: ") and str(bad) in err
    assert ModelRegistry(tmp_path / "reg").versions() == []  # nothing published


def test_a_release_with_a_corrupt_index_keeps_the_current_model(tmp_path: Path, files: Files,
                                                                cloud, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    _, served, client = cloud
    d = _installed(tmp_path, files)
    current = load_installed(d)
    assert current is not None and current.neighbours is not None
    for n, bad in enumerate(HOSTILE_INDEXES[k](files) for k in sorted(HOSTILE_INDEXES) if k != "empty"):
        served.model = release(files, f"m{n + 2}", n + 2, index=bad)  # digest matches the bad bytes
        with caplog.at_level(logging.WARNING):
            assert update(client, "dev", d, current) is current
        assert warned(caplog, f"m{n + 2}", "neighbour index", "keeping m1")
    again = load_installed(d)
    assert again is not None and again.version == "m1" and again.neighbours is not None


@pytest.mark.parametrize("manifest", [b"{not json", b"\xff\xfe\x00", b"[]", b"null",
                                      json.dumps({"version": "m2", "sequence": "two"}).encode(),
                                      json.dumps({"version": "m2", "sequence": 2, "sha256": "x",
                                                  "config": "max_len"}).encode()])
def test_a_release_with_a_corrupt_manifest_keeps_the_current_model(
        manifest: bytes, tmp_path: Path, files: Files, cloud) -> None:  # type: ignore[no-untyped-def]
    _, served, client = cloud
    d = _installed(tmp_path, files)
    current = load_installed(d)
    bad = release(files, "m2", 2, manifest=manifest)
    with pytest.raises(DeviceDataError, match="model m2"):
        install(bad, tmp_path / "elsewhere")
    served.model = bad
    assert update(client, "dev", d, current) is current
    assert json.loads((d / POINTER).read_text())["version"] == "m1"


# --- item ids the model cannot score --------------------------------------------------------------
def _runtime(path: Path, files: Files, **kw: object) -> DeviceRuntime:
    store = DeviceStore(path)
    if store.load_list() is None:
        store.save_list(CachedList(np.arange(1, 31), np.linspace(1, 0, 30).astype(np.float32), "L", "c",
                                   0.0, 1e9))
    rr = OnnxReranker(files.onnx, MAX_LEN, "m1", n_items=N_ITEMS)
    return DeviceRuntime("d", store, rr, None, NeverPolicy(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [N_ITEMS + 1, 4711, 0, -3])
def test_an_item_outside_the_catalogue_is_refused_and_nothing_changes(bad: int, tmp_path: Path,
                                                                      files: Files) -> None:
    rt = _runtime(tmp_path / "d.sqlite", files)
    for i in (3, 9, 12):
        rt.record(i, float(i))
    shown, count, seen = rt.recommend(), rt.store.event_count(), set(rt.store.seen())
    with pytest.raises(ValueError, match=rf"item id {bad} .*\[1, {N_ITEMS}\]"):
        rt.record(bad, 100.0)
    assert rt.store.event_count() == count and rt.store.seen() == seen
    assert rt.recommend().tolist() == shown.tolist()
    assert rt.record(N_ITEMS, 101.0).items.size  # the edge of the catalogue is fine
    rt.close()
    again = _runtime(tmp_path / "d.sqlite", files)  # and after a restart
    assert bad not in [i for i, _ in again.store.events()] and again.record(7, 102.0).items.size
    # a device running on the neighbour index alone knows the catalogue from it too
    index = NeighbourIndex.from_bytes(files.index)
    alone = DeviceRuntime("n", DeviceStore(tmp_path / "n.sqlite"), None, None, NeverPolicy(), neighbours=index)
    with pytest.raises(ValueError, match=rf"item id {bad} "):
        alone.record(bad, 1.0)
    assert alone.store.event_count() == 0


def test_a_store_holding_ids_outside_the_catalogue_opens_ranks_and_warns_once(
        tmp_path: Path, files: Files, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.sqlite"
    old = DeviceStore(path)  # as an older runtime left it: it took any id
    for n, item in enumerate([3, 4711, 5, 0, 8, -2, N_ITEMS + 1, 9]):
        old.append(item, float(n))
    old.save_list(CachedList(np.arange(1, 31), np.linspace(1, 0, 30).astype(np.float32), "L", "c", 0.0, 1e9))
    old.close()
    with caplog.at_level(logging.WARNING):
        rt = _runtime(path, files)
        shown = [rt.record(i, 100.0 + i).items for i in (10, 11, 12)]
    assert all(s.size == 10 for s in shown)
    assert sum("outside the catalogue" in r.getMessage() for r in caplog.records) == 1
    assert warned(caplog, "4 events", f"[1, {N_ITEMS}]")
    assert rt.store.event_count() == 11  # kept in the file, only skipped
    rt.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = _runtime(path, files)  # after a restart too
    assert again.record(13, 200.0).items.size == 10 and warned(caplog, "4 events")

