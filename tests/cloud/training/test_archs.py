"""Every reranker architecture: ONNX parity with torch, size budget, int8 variant, padding invariance."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcrec.cloud.training import archs  # noqa: E402
from dcrec.cloud.training.export import export_onnx, parity_error, quantize_int8  # noqa: E402
from dcrec.device.reranker import OnnxReranker  # noqa: E402

BEAUTY_ITEMS = 12101
MAX_BYTES = 6 * 1024 * 1024


@pytest.mark.parametrize("arch", sorted(archs.ARCHS))
def test_export_parity_size_and_int8(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = archs.build(arch, BEAUTY_ITEMS).eval()  # the default size, as shipped for Beauty
    path = export_onnx(model, tmp_path / f"{arch}.onnx")  # raises if parity > 1e-4
    assert parity_error(model, path, seed=1) < 1e-4
    assert path.stat().st_size <= MAX_BYTES, f"{arch}: {path.stat().st_size} bytes"
    q = quantize_int8(path, tmp_path / f"{arch}.int8.onnx")
    assert q.stat().st_size < 0.5 * path.stat().st_size
    fp, i8 = OnnxReranker.from_file(path, 50), OnnxReranker.from_file(q, 50)
    assert fp.has_embeddings and i8.has_embeddings
    rng = np.random.default_rng(0)
    hist, cand = rng.integers(1, BEAUTY_ITEMS + 1, 30), rng.integers(1, BEAUTY_ITEMS + 1, 100)
    a, b = fp.score(hist, cand), i8.score(hist, cand)
    # Quantisation moves scores a little but keeps the ranking largely intact.
    assert np.corrcoef(a, b)[0, 1] > 0.9


@pytest.mark.parametrize("arch", sorted(archs.ARCHS))
def test_leading_padding_changes_nothing(arch: str) -> None:
    torch.manual_seed(0)
    model = archs.build(arch, 500, {"dim": 16, "max_len": 12}).eval()
    hist = torch.tensor([[5, 9, 77, 3]])
    padded = torch.cat([torch.zeros(1, 8, dtype=torch.long), hist], dim=1)
    cand = torch.tensor([[1, 2, 3, 400]])
    with torch.no_grad():
        assert torch.allclose(model.score(hist, cand), model.score(padded, cand), atol=1e-5)
        empty = model.score(torch.zeros(1, 3, dtype=torch.long), cand)
    assert torch.isfinite(empty).all()


def test_save_load_round_trip_and_bad_names(tmp_path: Path) -> None:
    model = archs.build("gru4rec", 300, {"dim": 8})
    archs.save(model, tmp_path, {"objective": "full"})
    again, meta = archs.load(tmp_path)
    assert meta["arch"] == "gru4rec" and meta["objective"] == "full" and again.cfg.dim == 8
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown reranker"):
        archs.build("bert4rec", 10)
    with pytest.raises(ValueError, match="unknown din options"):
        archs.build("din", 10, {"layers": 3})


def test_sasrec_last_position_path_equals_the_full_encoder() -> None:
    """Scoring computes only the newest position in the final block; the answer is the same."""
    import torch

    from dcrec.cloud.training.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=300, layers=3)).eval()
    hist = torch.randint(1, 301, (4, 50))
    hist[0, :45] = 0  # short history, left-padded
    hist[1, :] = 0  # empty history
    with torch.no_grad():
        full = model.encode(hist)[:, -1]
        assert torch.allclose(model.encode_last(hist), full, atol=1e-5)
        assert torch.allclose(model.full_scores(hist), full @ model.item_emb.weight.T, atol=1e-4)


def test_collab_loss_ignores_lists_that_miss_the_target() -> None:
    """missing_target="ignore": a list without the answer adds nothing to the listwise term."""
    import torch
    import torch.nn.functional as F

    from dcrec.cloud.training.collab import RerankTrainConfig, _loss
    from dcrec.cloud.training.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=50, dim=16, layers=1, heads=1)).eval()
    hist = torch.randint(1, 51, (4, 6))
    targets = torch.tensor([3, 7, 9, 11])
    cands = torch.randint(1, 51, (4, 5))
    label = torch.tensor([2, -1, 0, -1])  # rows 1 and 3: the cloud missed the target
    lists = torch.cat([cands, label[:, None]], dim=1)
    gen = torch.Generator().manual_seed(0)
    got = _loss(model, "collab", 0.0, hist, targets, lists, 5, 50, gen)
    logits = model.score(hist, cands)
    want = F.cross_entropy(logits[[0, 2]], label[[0, 2]], reduction="sum") / 4
    assert torch.allclose(got, want)
    none = torch.cat([cands, torch.full((4, 1), -1)], dim=1)
    assert _loss(model, "collab", 0.0, hist, targets, none, 5, 50, gen).item() == 0.0
    with_full = _loss(model, "collab", 1.0, hist, targets, none, 5, 50, gen)
    full = model.full_scores(hist)
    full[:, 0] = -1e9
    assert torch.allclose(with_full, F.cross_entropy(full, targets))
    with pytest.raises(ValueError, match="missing_target"):
        RerankTrainConfig(missing_target="drop").validate()


def test_sasrec_attention_heads_equal_the_reshaped_form() -> None:
    """Heads as column blocks give what reshaping into (B, heads, L, D/heads) gives."""
    import torch

    from dcrec.cloud.training.sasrec import CausalSelfAttention, SASRecConfig

    torch.manual_seed(0)
    att = CausalSelfAttention(SASRecConfig(n_items=10, dim=48, heads=3)).eval()
    x = torch.randn(2, 7, 48)
    mask = torch.where(torch.rand(2, 7, 7) > 0.3, 0.0, -1e9)
    b, length, d = x.shape
    q, k, v = att.qkv(x).split(d, dim=2)
    q, k, v = (t.reshape(b, length, 3, d // 3).transpose(1, 2) for t in (q, k, v))
    ref = torch.softmax((q @ k.transpose(-2, -1)) * att.scale + mask[:, None], dim=-1) @ v
    ref = att.proj(ref.transpose(1, 2).reshape(b, length, d))
    with torch.no_grad():
        assert torch.allclose(att(x, mask), ref, atol=1e-5)
        assert torch.allclose(att(x, mask, last_only=True), ref[:, -1:], atol=1e-5)
