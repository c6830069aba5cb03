import gzip
from pathlib import Path

import numpy as np
import pytest

from graph_updater.datasets import DatasetError, load, time_split


def test_ml100k_counts_and_labels(ml100k):
    assert len(ml100k) == 100_000 and ml100k.dropped == 0
    assert len(set(ml100k.users)) == 943 and len(set(ml100k.items)) == 1682
    assert 0.55 < ml100k.positive_rate < 0.56  # ratings >= 4
    assert np.all(np.diff(ml100k.ts) >= 0)
    assert ml100k.item_text["1"].startswith("Toy Story (1995)")


def test_ml1m_has_only_users_below_3000(data_dir):
    d = load("ml-1m", data_dir)
    assert len(d) == 487_650
    users = d.users.astype(int)
    assert users.min() == 1 and users.max() == 2999


def test_bookcrossing_explicit_only(data_dir):
    d = load("bookcrossing", data_dir)
    assert len(d) + d.dropped == 433_671  # explicit (non-zero) ratings in the dump
    assert d.dropped == 267  # ISBNs with characters outside the id contract (quotes, spaces, ...)
    assert 0.83 < d.positive_rate < 0.85
    assert len(set(d.users)) == 77_726


def test_videogames_has_one_negative_per_positive(data_dir):
    d = load("videogames", data_dir)
    assert len(d) == 2 * 452_989
    assert d.positive_rate == pytest.approx(0.5)
    pos = set(zip(d.users[d.labels == 1], d.items[d.labels == 1], strict=True))
    neg = set(zip(d.users[d.labels == 0], d.items[d.labels == 0], strict=True))
    assert not pos & neg


@pytest.mark.parametrize("name", ["videogames", "beauty"])
def test_a_sampled_negative_user_label_is_not_told_by_the_previous_one(data_dir, name):
    """Before: a negative right after every positive, so each user's labels alternated 1, 0, 1, 0 and the last
    reaction in a prompt's history told the next label (AUC 0.999 on the tenant benchmark)."""
    d = load(name, data_dir)
    order = np.lexsort((np.arange(len(d)), d.users))  # per user, in time order
    users, labels = d.users[order], d.labels[order].astype(int)
    same = users[1:] == users[:-1]
    after_like = labels[1:][same & (labels[:-1] == 1)]
    assert 0.4 < after_like.mean() < 0.55, after_like.mean()  # (n-1)/(2n-1) for n of each, shuffled


def test_beauty_is_p5s_sequences_with_one_unseen_negative_per_positive(data_dir):
    d = load("beauty", data_dir)
    assert len(d) == 2 * 198_502 and d.positive_rate == pytest.approx(0.5)
    assert len(set(d.users)) == 22_363 and len(set(d.items[d.labels == 1])) == 12_101
    pos = set(zip(d.users[d.labels == 1], d.items[d.labels == 1], strict=True))
    neg = set(zip(d.users[d.labels == 0], d.items[d.labels == 0], strict=True))
    assert not pos & neg
    first = d.users == "b1"  # P5 line 1: user 1 bought items 1..5 in this order: B004756YJA first
    assert d.items[first & (d.labels == 1)][0] == "B004756YJA" and d.item_text["B004756YJA"].endswith("B004756YJA")


def test_time_split_is_ordered_and_complete(ml100k):
    s = time_split(ml100k, train=0.7, stream=0.15)
    assert len(s.train) + len(s.stream) + len(s.test) == len(ml100k)
    assert s.train.ts.max() <= s.stream.ts.min() and s.stream.ts.max() <= s.test.ts.min()


def test_missing_and_corrupt_files_name_the_file(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"u\.item"):
        load("ml-100k", tmp_path)
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (folder / "ratings_head487650.dat.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="ratings_head487650"):
        load("ml-1m", tmp_path)
    with gzip.open(folder / "ratings_head487650.dat.gz", "wt") as fh:
        fh.write("1::2::five::978300760\n")
    with pytest.raises(DatasetError, match="line 1"):
        load("ml-1m", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load("netflix", tmp_path)
