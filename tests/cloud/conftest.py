"""Fixtures for cloud tests: a small synthetic beauty catalogue on real files.

Six product families of eight items each. Users stay inside one family and
walk through it in order, so a model that learned anything ranks the family
first. The last item of each family never occurs in any sequence: it is a
cold item, known only by its text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcrec.shared.data import Dataset, load_dataset

FAMILIES = {
    "Nail Polish": ("OPI", "Nail Lacquer", "Beauty, Makeup, Nails, Nail Polish",
                    ["Ruby Red", "Pink Flamingo", "Coral Reef", "Midnight Blue", "Lilac Dream",
                     "Gold Glitter", "Cherry Kiss", "Peach Blossom"]),
    "Shampoo": ("Pantene", "Repair Shampoo for damaged hair", "Beauty, Hair Care, Shampoos",
                ["12 oz", "25 oz", "Curly Hair", "Color Treated", "Volume", "Smooth",
                 "Dandruff Control", "Sulfate Free"]),
    "Lipstick": ("Revlon", "Super Lustrous Lipstick", "Beauty, Makeup, Lips, Lipstick",
                 ["Cherries in the Snow", "Fire and Ice", "Pink in the Afternoon", "Certainly Red",
                  "Rum Raisin", "Bare Affair", "Wine with Everything", "Toast of New York"]),
    "Sunscreen": ("Neutrogena", "Ultra Sheer Sunscreen Lotion", "Beauty, Skin Care, Sun, Sunscreen",
                  ["SPF 30", "SPF 45", "SPF 55", "SPF 70", "SPF 100", "Face SPF 30",
                   "Sport SPF 50", "Kids SPF 70"]),
    "Perfume": ("Chanel", "Eau de Parfum Spray fragrance", "Beauty, Fragrance, Women, Eau de Parfum",
                ["No. 5", "Coco Mademoiselle", "Chance", "Allure", "Gabrielle", "Coco Noir",
                 "Chance Eau Tendre", "No. 19"]),
    "Razor": ("Gillette", "Men's Razor Blade Refills", "Beauty, Shave & Hair Removal, Men, Razors",
              ["Fusion 4 ct", "Fusion 8 ct", "Mach3 4 ct", "Mach3 8 ct", "ProGlide 4 ct",
               "ProGlide 8 ct", "Sensor 10 ct", "Fusion5 12 ct"]),
}
PER_FAMILY = 8


def family_items() -> dict[str, list[int]]:
    """Family name -> its dense item ids (1-based, catalogue order)."""
    out, nxt = {}, 1
    for fam in FAMILIES:
        out[fam] = list(range(nxt, nxt + PER_FAMILY))
        nxt += PER_FAMILY
    return out


def cold_items() -> list[int]:
    """The last item of each family: never in any sequence."""
    return [ids[-1] for ids in family_items().values()]


def write_synthetic(directory: Path, n_users: int = 240, seed: int = 0) -> Path:
    """Write ``items.tsv`` and ``sequences.txt`` for the synthetic catalogue."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["item_id\tasin\ttitle\tcategories\tbrand\tprice"]
    for fam, (brand, product, cats, variants) in FAMILIES.items():
        for k, v in enumerate(variants):
            item_id = family_items()[fam][k]
            rows.append(f"{item_id}\tA{item_id:05d}\t{brand} {product}, {v}\t{cats}\t{brand}\t9.99")
    (directory / "items.tsv").write_text("\n".join(rows) + "\n")

    rng = np.random.default_rng(seed)
    fams = list(family_items().values())
    lines = []
    for u in range(n_users):
        warm = fams[u % len(fams)][:-1]  # the family's cold item never occurs
        start = int(rng.integers(len(warm)))
        length = int(rng.integers(5, 9))
        seq = [warm[(start + j) % len(warm)] for j in range(length)]
        lines.append(f"{u + 1} " + " ".join(map(str, seq)))
    (directory / "sequences.txt").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(str(write_synthetic(tmp_path_factory.mktemp("synthetic"))))


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text-embedding cache for the session, so MiniLM runs once per text set."""
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="session")
def families() -> dict[str, list[int]]:
    return family_items()


@pytest.fixture(scope="session")
def cold() -> list[int]:
    return cold_items()
