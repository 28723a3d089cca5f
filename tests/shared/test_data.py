from pathlib import Path

import numpy as np
import pytest

from dcrec.shared.data import DataError, load_atomic, load_dataset, load_sequences


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sequences_format_with_items(tmp_path: Path) -> None:
    write(tmp_path / "sequences.txt", "1 10 20 30\n2 20 40\n")
    write(tmp_path / "items.tsv", "item_id\tasin\ttitle\tcategories\tbrand\tprice\n"
          "10\tA\tLipstick\tBeauty, Makeup\tAcme\t3.0\n20\tB\tShampoo\tBeauty, Hair\tUnknown\t1.0\n"
          "30\tC\tSoap\tBeauty\tAcme\t\n40\tD\t\t\t\t\n")
    ds = load_sequences(tmp_path)
    assert ds.n_users == 2 and ds.n_items == 4 and len(ds.interactions) == 5
    raw = ds.catalogue.raw_ids
    assert [raw[i] for i in ds.sequence(0)] == ["10", "20", "30"]
    assert ds.catalogue.titles[ds.sequence(1)[0]] == "Shampoo"
    assert "Unknown" not in ds.catalogue.texts[ds.sequence(1)[0]]  # placeholder brands dropped
    assert ds.catalogue.titles[4] == "item 40"  # empty title falls back to the id
    assert not ds.has_timestamps


def test_sequences_unknown_item_extends_catalogue(tmp_path: Path) -> None:
    write(tmp_path / "sequences.txt", "u1 7 8\n")
    ds = load_sequences(tmp_path)
    assert ds.n_items == 2 and ds.catalogue.titles[1] == "item 7"


def test_sequences_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_sequences(tmp_path)
    write(tmp_path / "sequences.txt", "1 5 6\n2\n")
    with pytest.raises(DataError, match=r"sequences.txt:2"):
        load_sequences(tmp_path)


def test_atomic_format_sorts_by_time(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "a\t2\t5\t300\na\t1\t3\t100\nb\t3\t4\t50\na\t3\t1\t200\n")
    write(tmp_path / "toy.item", "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
          "1\tAlpha\tDrama\n2\tBeta\tComedy\n3\tGamma\tAction\n4\tDelta\tHorror\n")
    ds = load_atomic(tmp_path / "toy.inter")
    assert ds.has_timestamps and ds.n_items == 4 and ds.n_users == 2
    titles = [ds.catalogue.titles[i] for i in ds.sequence(0)]
    assert titles == ["Alpha", "Gamma", "Beta"]
    assert ds.times(0).tolist() == [100.0, 200.0, 300.0]
    assert "Drama" in ds.catalogue.texts[1]


def test_atomic_bad_rows_are_named(tmp_path: Path) -> None:
    write(tmp_path / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\na\t1\tnoon\n")
    with pytest.raises(DataError, match=r"bad.inter:2: timestamp 'noon'"):
        load_atomic(tmp_path / "bad.inter")
    write(tmp_path / "bad.inter", "user:token\titem_id:token\n")
    with pytest.raises(DataError, match="user_id"):
        load_atomic(tmp_path / "bad.inter")


def test_movielens_from_recbole(ml100k) -> None:  # type: ignore[no-untyped-def]
    assert (ml100k.n_users, ml100k.n_items, len(ml100k.interactions)) == (943, 1682, 100000)
    assert ml100k.has_timestamps
    assert ml100k.catalogue.titles[1] == "Toy Story"
    for u in range(0, 943, 97):
        assert np.all(np.diff(ml100k.times(u)) >= 0)


def test_beauty_reference_data() -> None:
    ds = load_dataset("beauty")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (22363, 12101, 198502)
    assert ds.catalogue.titles[1].startswith("OPI Nail Lacquer")


def test_unknown_dataset_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="not a known name"):
        load_dataset("no-such-data")
