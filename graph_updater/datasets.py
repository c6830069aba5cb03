"""Dataset adapters: real recommendation datasets -> one time-ordered interaction table.

Every loader returns :class:`Interactions` (user, item, label, ts in epoch ms, item text), sorted by time.
Ids are the dataset's own ids as strings; rows whose ids break the wire contract (``schemas.messages.Id``)
are dropped and counted in ``dropped``. Label rules:

=================  ==========================================================================================
``ml-100k``        MovieLens-100K ``u.data``: rating >= 4 -> 1, else 0. Real timestamps.
``ml-1m``          MovieLens-1M: only ``ratings_head487650.dat.gz`` carries ratings, i.e. **users 1-2999 only**
                   (the shared copy lacks users 3000-6040). rating >= 4 -> 1, else 0. Real timestamps.
``bookcrossing``   Book-Crossing explicit ratings only (1-10; the implicit 0s are dropped): rating >= 6 -> 1.
                   The dump has **no timestamps**: a seeded random permutation stands in for time
                   (``SYNTHETIC_T0`` + 1 s per row), so a "time" split of it is a random split. A book's
                   brand (``item_brand``) is its author.
``videogames``     Amazon Video Games 5-core (LC-Rec): implicit, positives only, per-user order without clock
                   times. Each user's n items and as many sampled negatives (label 0, seeded, items the user never
                   interacted with) are shuffled together, positives kept in their order, at 2n sorted uniform
                   times in ``SYNTHETIC_T0 + [0, 1e6)`` s, so a time split keeps the latest share of every user's
                   sequence for later (not one negative right after each positive: that made labels alternate).
``beauty``         Amazon Beauty 2014 5-core as processed by P5 (``sequential_data.txt``: per-user chronological
                   item sequences; ``datamaps.json``: ids -> ASINs): the same implicit protocol as
                   ``videogames`` (synthetic per-user times, one sampled unseen item per positive as 0). Its
                   ``datamaps.json`` names 2,320 brand/category attributes but holds **no item -> attribute map**
                   and there is no title file, so an item's text is ``Beauty product <ASIN>``: text carries no
                   content signal on this dataset.
=================  ==========================================================================================

A tenant's own data is a folder of CSV files (:func:`load_tenant`): ``clicks.csv`` and optionally ``items.csv``
(its ``brand`` column, where set, is the item's brand). The other built-in datasets name no brand.

Missing or unreadable files raise :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SYNTHETIC_T0_S = 1_000_000_000  # 2001-09-09: base of synthetic clocks
ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


class DatasetError(RuntimeError):
    """A dataset file is missing or malformed; the message names the file."""


@dataclass
class Interactions:
    """A time-ordered interaction table. Arrays are aligned; ``ts`` is non-decreasing (epoch milliseconds)."""

    name: str
    users: np.ndarray  # dtype object (str)
    items: np.ndarray  # dtype object (str)
    labels: np.ndarray  # int8, 1 = click
    ts: np.ndarray  # int64 epoch ms
    item_text: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    item_brand: dict[str, str] = field(default_factory=dict)  # who makes the item (a book's author), where known

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: np.ndarray | slice) -> Interactions:
        return Interactions(self.name, self.users[index], self.items[index], self.labels[index], self.ts[index],
                            self.item_text, self.dropped, self.item_brand)

    @property
    def positive_rate(self) -> float:
        return float(self.labels.mean()) if len(self) else 0.0


@dataclass
class Split:
    """Time-ordered thirds of one dataset: offline ``train`` history, the ``stream`` replayed to Kafka, ``test``."""

    train: Interactions
    stream: Interactions
    test: Interactions


def time_split(data: Interactions, train: float = 0.7, stream: float = 0.15) -> Split:
    """Split by time order: first ``train`` share, next ``stream`` share, the rest is ``test``.

    Cut points are row counts of the (already time-sorted) table; rows with equal timestamps may straddle a cut.
    """
    if not (0 < train < 1 and 0 <= stream < 1 and train + stream < 1):
        raise ValueError("need 0 < train, 0 <= stream and train + stream < 1")
    n = len(data)
    a, b = int(n * train), int(n * (train + stream))
    return Split(data.take(slice(0, a)), data.take(slice(a, b)), data.take(slice(b, n)))


def _open_text(path: Path, encoding: str) -> io.TextIOBase:
    if not path.exists():
        raise DatasetError(f"dataset file not found: {path}")
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # noqa: SIM115 (returned, caller closes)
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _read_rows(path: Path, parse: Callable[[str], tuple | None], encoding: str = "utf-8") -> list[tuple]:
    """Parse every line of ``path`` with ``parse`` (None = skip); wrap any failure with the file and line."""
    rows, lineno = [], 0
    with _open_text(path, encoding) as fh:
        try:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 (read in the except clause)
                if line.strip():
                    row = parse(line.rstrip("\r\n"))
                    if row is not None:
                        rows.append(row)
        except (ValueError, IndexError, UnicodeDecodeError, EOFError, OSError) as exc:
            raise DatasetError(f"{path}: malformed at line {lineno}: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def _build(name: str, rows: Iterable[tuple[str, str, int, int]], item_text: dict[str, str],
           item_brand: dict[str, str] | None = None) -> Interactions:
    """Rows (user, item, label, ts_ms) -> an Interactions table sorted stably by time, invalid ids dropped."""
    rows = list(rows)
    kept = [r for r in rows if ID_RE.match(r[0]) and ID_RE.match(r[1])]
    users = np.array([r[0] for r in kept], dtype=object)
    items = np.array([r[1] for r in kept], dtype=object)
    labels = np.array([r[2] for r in kept], dtype=np.int8)
    ts = np.array([r[3] for r in kept], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    return Interactions(name, users[order], items[order], labels[order], ts[order], item_text,
                        dropped=len(rows) - len(kept), item_brand=item_brand or {})


def load_ml100k(root: Path) -> Interactions:
    folder = root / "ml-100k"

    def item_row(line: str) -> tuple[str, str]:
        f = line.split("|")
        genres = [g for g, flag in zip(ML100K_GENRES, f[5:24], strict=True) if flag == "1"]
        return f[0], f"{f[1]} ({', '.join(genres)})"

    def rating(line: str) -> tuple[str, str, int, int]:
        u, i, r, t = line.split("\t")
        return u, i, int(int(r) >= 4), int(t) * 1000

    text = dict(_read_rows(folder / "u.item", item_row, "latin-1"))
    return _build("ml-100k", _read_rows(folder / "u.data", rating), text)


def load_ml1m(root: Path) -> Interactions:
    folder = root / "ml-1m"

    def movie(line: str) -> tuple[str, str]:
        mid, title, genres = line.split("::")
        return mid, f"{title} ({genres.replace('|', ', ')})"

    def rating(line: str) -> tuple[str, str, int, int]:
        u, i, r, t = line.split("::")
        return u, i, int(int(r) >= 4), int(t) * 1000

    text = dict(_read_rows(folder / "movies.dat", movie, "latin-1"))
    return _build("ml-1m", _read_rows(folder / "ratings_head487650.dat.gz", rating), text)


def _bx_csv(path: Path) -> list[list[str]]:
    with _open_text(path, "latin-1") as fh:
        try:
            reader = csv.reader(fh, delimiter=";", quotechar='"', escapechar="\\")
            header = next(reader)
            rows = [r for r in reader if len(r) >= len(header)]
        except (csv.Error, UnicodeDecodeError, EOFError, OSError, StopIteration) as exc:
            raise DatasetError(f"{path}: malformed Book-Crossing CSV: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def load_bookcrossing(root: Path, seed: int = 0, explicit: bool = True) -> Interactions:
    """Explicit ratings with the label rule above; ``explicit=False`` gives instead the implicit-only rows
    (rating 0: the user touched the book without rating it) as label-1 interactions, which only the retrieval
    benchmark uses, to reach Book-Crossing's ~105k users."""
    folder = root / "bookcrossing"
    books = _bx_csv(folder / "BX-Books.csv.gz")
    text = {r[0].strip(): f"{r[1].strip()} by {r[2].strip()} ({r[3].strip()})" for r in books}
    author = {r[0].strip(): r[2].strip() for r in books if r[2].strip()}
    chosen = [(r[0].strip(), r[1].strip(), int(r[2])) for r in _bx_csv(folder / "BX-Book-Ratings.csv.gz")
              if (r[2].strip() not in ("", "0")) == explicit]
    order = np.random.default_rng(seed).permutation(len(chosen))
    rows = ((chosen[j][0], chosen[j][1], int(chosen[j][2] >= 6 or not explicit), (SYNTHETIC_T0_S + k) * 1000)
            for k, j in enumerate(order))
    return _build("bookcrossing", rows, text, author)


def _implicit_rows(user: str, sequence: list[str], item_ids: list[str], rng: np.random.Generator
                   ) -> list[tuple[str, str, int, int]]:
    """An implicit-feedback user as labelled rows: its ``n`` positives in their order and ``n`` sampled items it
    never interacted with (label 0), shuffled together (a uniformly random interleaving) at ``2n`` sorted uniform
    times ``T0 + u * 1e6`` s. Not one negative right after each positive: that made the labels alternate 1, 0,
    1, 0, so the last reaction in the history told the next label (a model reached AUC 0.999 on that)."""
    seen, n = set(sequence), len(sequence)
    times = (SYNTHETIC_T0_S + np.round(np.sort(rng.random(2 * n)) * 1e6).astype(np.int64)) * 1000
    positive = np.zeros(2 * n, dtype=bool)
    positive[rng.choice(2 * n, n, replace=False)] = True
    negatives = []
    for _ in range(n):
        negative = item_ids[int(rng.integers(len(item_ids)))]
        while negative in seen:
            negative = item_ids[int(rng.integers(len(item_ids)))]
        negatives.append(negative)
    return [(user, item, 1, int(ts)) for item, ts in zip(sequence, times[positive], strict=True)] + \
        [(user, item, 0, int(ts)) for item, ts in zip(negatives, times[~positive], strict=True)]


def load_videogames(root: Path, seed: int = 0) -> Interactions:
    folder = root / "amazon" / "videogames-2018-lcrec"
    inter_path = folder / "Games.inter.json.gz"
    try:
        with _open_text(inter_path, "utf-8") as fh:
            sequences: dict[str, list[int]] = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise DatasetError(f"{inter_path}: malformed JSON: {exc}") from exc
    users = dict(_read_rows(folder / "Games.user2id.gz", lambda line: tuple(line.split("\t")[::-1])))
    asins = dict(_read_rows(folder / "Games.item2id.gz", lambda line: tuple(line.split("\t")[::-1])))

    def title(line: str) -> tuple[str, str] | None:
        f = line.split("\t")
        return None if f[0] == "item_id" else (f[1], f[2])

    text = dict(_read_rows(folder / "items_with_titles.tsv", title))
    ids = sorted(asins, key=int)
    rng = np.random.default_rng(seed)
    rows = [row for uidx, seq in sequences.items()
            for row in _implicit_rows(users[uidx], [str(i) for i in seq], ids, rng)]
    return _build("videogames", [(u, asins[i], y, ts) for u, i, y, ts in rows], text)


def load_beauty(root: Path, seed: int = 0) -> Interactions:
    """Amazon Beauty (2014 5-core as processed by P5): the same implicit protocol as :func:`load_videogames`."""
    folder = root / "amazon" / "beauty-2014-p5"
    try:
        with (folder / "datamaps.json").open(encoding="utf-8") as fh:
            asins: dict[str, str] = json.load(fh)["id2item"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, OSError) as exc:
        raise DatasetError(f"{folder / 'datamaps.json'}: unreadable or without id2item: {exc}") from exc
    sequences = _read_rows(folder / "sequential_data.txt", lambda line: line.split())
    rng = np.random.default_rng(seed)
    ids = sorted(asins, key=int)
    rows = [row for user, *seq in sequences for row in _implicit_rows(f"b{user}", seq, ids, rng)]
    return _build("beauty", [(u, asins[i], y, ts) for u, i, y, ts in rows],
                  {asin: f"Beauty product {asin}" for asin in asins.values()})


MIN_TENANT_ROWS = 500  # fewer cannot fill a 70/15/15 time split with training, validation and test rows
MAX_BAD_SHARE = 0.01  # a tenant file with more bad rows than this is refused, not half-read
CLICK_COLUMNS = ("user_id", "item_id", "label", "ts")
ITEM_COLUMNS = ("item_id", "text")


def _tenant_rows(path: Path, required: tuple[str, ...], parse: Callable[[dict], tuple]) -> list[tuple]:
    """Rows of a tenant CSV with a header naming ``required`` (extra columns allowed); a row ``parse`` rejects
    is reported with its line number and skipped, unless more than :data:`MAX_BAD_SHARE` of them are bad."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                               f"{', '.join(required)}")
        rows, bad = [], []
        for row in reader:
            try:
                rows.append(parse(row))
            except (ValueError, TypeError) as exc:
                bad.append(f"line {reader.line_num}: {exc}")
    total = len(rows) + len(bad)
    if bad and len(bad) > MAX_BAD_SHARE * total:
        raise DatasetError(f"{path}: {len(bad)} of {total} rows are bad (more than {MAX_BAD_SHARE:.0%}); first: "
                           + "; ".join(bad[:5]))
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} bad row(s): " + "; ".join(bad[:10]), stacklevel=2)
    return rows


def _click_row(row: dict) -> tuple[str, str, int, int]:
    label = row["label"].strip()
    if label not in ("0", "1"):
        raise ValueError(f"label {label!r} is not 0 or 1")
    ts = int(float(row["ts"]))
    ts = ts * 1000 if ts < 100_000_000_000 else ts  # epoch seconds (before 5138) or milliseconds
    for key in ("user_id", "item_id"):
        if not ID_RE.match(row[key].strip()):
            raise ValueError(f"{key} {row[key]!r} is not 1-64 characters of [A-Za-z0-9._:@-]")
    return row["user_id"].strip(), row["item_id"].strip(), int(label), ts


def _item_row(row: dict) -> tuple[str, str, str]:
    """(item id, prompt text, brand or "")."""
    attrs = [(row.get(k) or "").strip() for k in ("category", "brand", "price")]
    text = row["text"].strip()
    if not text or not ID_RE.match(row["item_id"].strip()):
        raise ValueError("empty text or an item_id that is not 1-64 characters of [A-Za-z0-9._:@-]")
    extra = [a for a in attrs if a]
    return row["item_id"].strip(), f"{text} ({'; '.join(extra)})" if extra else text, attrs[1]


def is_tenant_folder(name: str) -> bool:
    return (Path(name) / "clicks.csv").is_file()


def load_tenant(folder: Path) -> Interactions:
    """A tenant's own data: ``<folder>/clicks.csv`` (columns ``user_id,item_id,label,ts``: label 1 = click, 0 =
    shown and not clicked; ts in epoch milliseconds, or seconds when below 10^11) and, optionally,
    ``<folder>/items.csv`` (``item_id,text`` and optional ``category,brand,price``, joined into the text as the
    ``items`` topic does). Rows are sorted by time; bad rows are skipped and reported with their line numbers
    unless they exceed :data:`MAX_BAD_SHARE`; fewer than :data:`MIN_TENANT_ROWS` clicks is an error."""
    folder = Path(folder)
    rows = _tenant_rows(folder / "clicks.csv", CLICK_COLUMNS, _click_row)
    if len(rows) < MIN_TENANT_ROWS:
        raise DatasetError(f"{folder / 'clicks.csv'}: {len(rows)} usable rows; at least {MIN_TENANT_ROWS} are needed "
                           "for the 70/15/15 time split")
    items = folder / "items.csv"
    described = _tenant_rows(items, ITEM_COLUMNS, _item_row) if items.exists() else []
    return _build(dataset_key(str(folder)), rows, {item: text for item, text, _ in described},
                  {item: brand for item, _, brand in described if brand})


def dataset_key(name: str) -> str:
    """A file-name-safe name of a dataset: the built-in name, or ``csv-<folder name>-<hash of its path>``."""
    if name in LOADERS:
        return name
    folder = Path(name).resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return f"csv-{re.sub(r'[^A-Za-z0-9._-]', '_', folder.name)[:40]}-{digest}"


LOADERS: dict[str, Callable[[Path], Interactions]] = {
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "bookcrossing": load_bookcrossing,
    "videogames": load_videogames,
    "beauty": load_beauty,
}


def load(name: str, root: Path) -> Interactions:
    """Load dataset ``name`` (one of :data:`LOADERS`) from the data root (default ``../shared/data``), or a
    tenant's folder of CSV files (:func:`load_tenant`) when ``name`` is such a folder."""
    if name not in LOADERS and is_tenant_folder(name):
        return load_tenant(Path(name))
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)} or a folder holding "
                           "clicks.csv")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {root} (set EXITREC_DATA_DIR)")
    return LOADERS[name](root)
