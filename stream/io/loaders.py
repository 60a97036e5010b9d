"""Click logs in public formats -> the project's clicks and item records.

One function per format, and :func:`load` dispatching on the format name:

- ``jsonl``: one click record per line (schemas/click), checked by
  :func:`stream.wire.clicks.decode_clicks` (same verdicts and reasons as the
  worker); items, when given, one item record per line (schemas/item).
- ``mind`` (Microsoft News Dataset): ``behaviors.tsv`` and ``news.tsv``.
- ``movielens``: ml-100k's ``u.data`` and ``u.item``, or MovieLens "latest"
  ``ratings.csv`` and ``movies.csv`` (CSV with a header; recognised by the name).
- ``globo`` (the Globo.com G1 news portal log): ``clicks_hour_*.csv`` files,
  one or a folder of them (``user_id``, ``session_id``, ``click_article_id``,
  ``click_timestamp`` in ms, ...); no item metadata.

Every loader returns a :class:`ClickLog`: the clicks as one
:class:`~stream.core.clicks.ClickBatch` sorted by time (stable: clicks with
the same ``ts`` keep their file order), the item records valid per
schemas/item, and the skipped lines or records counted per reason.

Decisions, the same for every format:

- **Bad input.** A line that cannot be used is skipped, counted under its
  reason in ``skipped`` and logged (the first few per reason and file); item
  reasons start with ``"items: "``. When more than half of a file's non-blank
  lines are bad, or the file cannot be read, :class:`LoadError` is raised with
  a one-line message naming the file (and the first bad line). Blank lines are
  ignored; ``.gz`` files are read through gzip.
- **Duplicate items.** A later line replaces an earlier one with the same
  ``item_id`` (like the compacted items topic), except that a JSONL item with
  an older ``ts`` does not replace a newer one; each loser is counted as
  ``"items: duplicate item_id"``.
- **Item times.** MIND and MovieLens items have no version time: their ``ts``
  is one millisecond before the first click (0 when there is no click), so
  they precede every click of the log.
- **Items without metadata** (a news row with no category, subcategory or
  entity; a movie with no genre flag) are left out of ``items`` and counted
  as ``"items: item without metadata"``; their clicks are kept.

Format decisions:

- **MIND times** (``"11/15/2019 8:55:22 AM"``, month/day/year, 12-hour clock)
  are read as UTC. A click is an impression labelled 1 (``"N123-1"``), at the
  impression's time, with ``event_id = f"{impression_id}-{news_id}"``; tokens
  without a 0/1 label are counted as ``"impression without 0/1 label"``.
  With ``history=True`` a user's history list also becomes clicks, **once per
  user** (MIND repeats the same pre-period history on every impression of a
  user): taken from the user's earliest impression, all at that impression's
  time minus one second, in the listed order, ``event_id =
  f"{impression_id}-h{position}-{news_id}"``.
- **MovieLens weights**: every rating is a click with ``weight = rating / 5``
  (1 star -> 0.2, 5 stars -> 1.0), so low ratings still count, less;
  ``ts = timestamp * 1000``; ``event_id = f"{user_id}-{item_id}-{timestamp}"``.
  Items: ``category`` = the first genre flagged, ``tags`` = every genre
  flagged (:data:`ML_GENRES` order), ``title`` from the latin-1 file.

>>> parse_mind_time("11/15/2019 8:55:22 AM"), parse_mind_time("11/15/2019 8:55:22 PM")
(1573808122000, 1573851322000)
>>> parse_mind_time("11/15/2019 12:00:00 AM") == parse_mind_time("11/15/2019 0:00:00 AM")
True
"""

from __future__ import annotations

import csv
import functools
import gzip
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import orjson

from stream.core.clicks import ClickBatch
from stream.errors import BadRecord, ConfigError
from stream.wire.clicks import ID_MAX_LEN, TS_MAX, decode_clicks
from stream.wire.schemas import validate

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "mind", "movielens", "globo")

#: The 19 genre flags of ml-100k's u.item, in file order.
ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

ITEMS_PREFIX = "items: "  # prefix of the skip reasons of item files
LOGGED_PER_REASON = 5  # bad lines logged one by one per reason and file; the rest are summed up
_CHUNK = 65_536  # JSONL lines decoded per decode_clicks call
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class LoadError(BadRecord):
    """A click log or item file that cannot be used as a whole.

    The message is one line naming the file, and the line when there is one;
    ``path`` and ``line`` hold them (``line`` is None when not about a line).
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line


@dataclass(frozen=True)
class ClickLog:
    """A loaded click log.

    - ``clicks``: :class:`~stream.core.clicks.ClickBatch` sorted by ``ts``
      (stable), ``event_ids`` filled
    - ``items``: item records valid per schemas/item, one per item id, in
      file order
    - ``source``: ``"<format>:<clicks file>"``
    - ``skipped``: reason -> number of lines or records skipped
    """

    clicks: ClickBatch
    items: list[dict]
    source: str
    skipped: dict[str, int]

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


# --------------------------------------------------------------------------- dispatch


def load(
    path: str | Path,
    format: str,
    items_path: str | Path | None = None,
    *,
    history: bool = False,
) -> ClickLog:
    """Load a click log of ``format`` (``"jsonl"``, ``"mind"`` or ``"movielens"``).

    ``path`` is the clicks file, or for ``mind`` / ``movielens`` the directory
    holding both files; ``items_path`` overrides where the items come from.
    ``history`` (MIND only) turns history lists into clicks. Raises
    :class:`LoadError` for an unusable file and :class:`ConfigError` for a bad
    argument.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if history and format != "mind":
        raise ConfigError("history applies to the mind format only")
    if format == "jsonl":
        return load_jsonl(path, items_path)
    if items_path is not None and _is_jsonl(Path(items_path)):
        # item records (e.g. `clusterstream embed` output) go with every format
        if format == "mind":
            log = load_mind(path, None, history=history)
        elif format == "globo":
            log = load_globo(path, None)
        else:
            log = load_movielens(path, None)
        skipped = Counter({k: v for k, v in log.skipped.items() if not k.startswith(ITEMS_PREFIX)})
        records = _read_item_jsonl(Path(items_path), skipped)
        return ClickLog(log.clicks, records, log.source, dict(skipped))
    if format == "mind":
        return load_mind(path, items_path, history=history)
    if format == "globo":
        return load_globo(path, items_path)
    return load_movielens(path, items_path)


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


# --------------------------------------------------------------------------- reading


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, raw line)`` of a file, gzip-aware; errors as LoadError."""
    no = 0
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc.strerror or exc}", path) from None
    try:
        with f:
            for no, line in enumerate(f, 1):
                yield no, line
    except (OSError, EOFError) as exc:
        raise LoadError(f"{path}: cannot read line {no + 1}: {exc}", path, no + 1) from None


class _Tally:
    """Bad lines of one file: counted per reason, a few logged, fatal past half."""

    def __init__(self, path: Path, skipped: Counter, prefix: str = ""):
        self.path = path
        self.skipped = skipped
        self.prefix = prefix
        self.lines = 0  # non-blank lines seen
        self.bad = 0  # lines skipped as a whole
        self.first: tuple[int, str] | None = None
        self._logged: Counter = Counter()

    def skip(self, line: int, reason: str, whole_line: bool = True) -> None:
        """Count one skipped line (or, with ``whole_line=False``, one record of a line)."""
        if whole_line:
            self.bad += 1
            if self.first is None:
                self.first = (line, reason)
        self.skipped[self.prefix + reason] += 1
        self._logged[reason] += 1
        if self._logged[reason] <= LOGGED_PER_REASON:
            logger.warning("%s line %d skipped: %s", self.path, line, reason)

    def finish(self) -> None:
        """Raise when more than half of the lines were bad; sum up what was not logged."""
        if self.bad * 2 > self.lines:
            line, reason = self.first
            raise LoadError(
                f"{self.path}: {self.bad} of {self.lines} lines are bad (line {line}: {reason})",
                self.path,
                line,
            )
        for reason, n in self._logged.items():
            if n > LOGGED_PER_REASON:
                logger.warning("%s: %d more lines skipped: %s", self.path, n - LOGGED_PER_REASON, reason)  # fmt: skip


def _utf8_lines(path: Path, tally: _Tally) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file, counted in ``tally``; bad UTF-8 is skipped."""
    for no, raw in _lines(path):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            tally.lines += 1
            tally.skip(no, "invalid UTF-8")
            continue
        if line and not line.isspace():
            tally.lines += 1
            yield no, line


def _ok_id(value: str) -> bool:
    return 0 < len(value) <= ID_MAX_LEN


def _keep(items: dict[str, dict], record: dict, tally: _Tally, line: int) -> None:
    """Add an item record; a later one replaces an earlier one unless its ts is older."""
    old = items.get(record["item_id"])
    if old is not None:
        tally.skip(line, "duplicate item_id", whole_line=False)
        if record["ts"] < old["ts"]:
            return
    items[record["item_id"]] = record


def _first_ts(ts: np.ndarray) -> int:
    """Item time for formats without one: 1 ms before the first click, never < 0."""
    return max(int(ts.min()) - 1, 0) if ts.size else 0


def _batch(users: list[str], items: list[str], ts, weights, events: list[str]) -> ClickBatch:
    """A ClickBatch sorted by ts (stable); ``ts`` / ``weights`` are sequences or arrays."""
    ts = np.asarray(ts, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if ts.size > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        order = np.argsort(ts, kind="stable")
        idx = order.tolist()
        users = [users[i] for i in idx]
        items = [items[i] for i in idx]
        events = [events[i] for i in idx]
        ts, weights = ts[order], weights[order]
    return ClickBatch.from_columns(users, items, ts, weights, events)


# --------------------------------------------------------------------------- jsonl


def load_jsonl(path: str | Path, items_path: str | Path | None = None) -> ClickLog:
    """Click records, one per line (schemas/click); item records from ``items_path``.

    Reasons for skipped clicks are those of :func:`stream.wire.clicks.decode_clicks`
    (``"invalid JSON"``, ``"missing field: ts"``, ...); extra fields of a click
    (``context``) are not kept.
    """
    path = Path(path)
    skipped: Counter = Counter()
    tally = _Tally(path, skipped)
    users: list[str] = []
    items: list[str] = []
    events: list[str] = []
    ts_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    values: list[bytes] = []
    numbers: list[int] = []

    def decode() -> None:
        batch, rejected = decode_clicks(values)
        users.extend(batch.user_ids)
        items.extend(batch.item_ids)
        events.extend(batch.event_ids)
        ts_parts.append(batch.ts)
        weight_parts.append(batch.weights)
        for i, reason in rejected:
            tally.skip(numbers[i], reason)
        tally.lines += len(values)
        values.clear()
        numbers.clear()

    for no, line in _lines(path):
        if not line or line.isspace():
            continue
        values.append(line)
        numbers.append(no)
        if len(values) >= _CHUNK:
            decode()
    decode()
    tally.finish()
    clicks = _batch(users, items, np.concatenate(ts_parts), np.concatenate(weight_parts), events)
    records = _read_item_jsonl(Path(items_path), skipped) if items_path is not None else []
    return ClickLog(clicks, records, f"jsonl:{path}", dict(skipped))


def _read_item_jsonl(path: Path, skipped: Counter) -> list[dict]:
    tally = _Tally(path, skipped, ITEMS_PREFIX)
    items: dict[str, dict] = {}
    for no, line in _lines(path):
        if not line or line.isspace():
            continue
        tally.lines += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            tally.skip(no, "invalid JSON")
            continue
        if type(record) is not dict:
            tally.skip(no, "not an object")
            continue
        try:
            _validate_item(record)
        except BadRecord as exc:
            tally.skip(no, exc.reason)
            continue
        _keep(items, record, tally, no)
    tally.finish()
    return list(items.values())


def _validate_item(record: dict) -> None:
    """``validate("item", record)``, without walking a long vector through jsonschema.

    A vector that is plainly a non-empty list of numbers is checked here and
    stands in as ``[0.0]`` for the rest of the schema (same verdict, and the
    cost no longer grows with the dimension); anything else gets the full
    validation and its exact reason.
    """
    vector = record.get("vector")
    if (
        type(vector) is list
        and vector
        and all(type(x) is float or type(x) is int for x in vector)  # bool is not a number
    ):
        validate("item", {**record, "vector": [0.0]})
    else:
        validate("item", record)


# --------------------------------------------------------------------------- MIND


@functools.lru_cache(maxsize=4096)
def _days(year: int, month: int, day: int) -> int:
    return date(year, month, day).toordinal() - _EPOCH_ORDINAL


def parse_mind_time(text: str) -> int:
    """``"11/15/2019 8:55:22 AM"`` (month/day/year, 12-hour clock, UTC) -> epoch ms.

    Raises ``ValueError`` for anything else.
    """
    try:
        day_text, clock, half = text.split()
        month, day, year = day_text.split("/")
        hour, minute, second = (int(x) for x in clock.split(":"))
        days = _days(int(year), int(month), int(day))
    except (ValueError, TypeError):
        raise ValueError(f"not a MIND time: {text!r}") from None
    half = half.upper()
    if half not in ("AM", "PM") or not (0 <= hour <= 12 and 0 <= minute < 60 and 0 <= second < 60):
        raise ValueError(f"not a MIND time: {text!r}")
    hour = hour % 12 + (12 if half == "PM" else 0)
    ms = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1000
    if not 0 <= ms <= TS_MAX:
        raise ValueError(f"MIND time out of range: {text!r}")
    return ms


def _side_file(
    path: Path, names: tuple[str, str], items_path: str | Path | None
) -> tuple[Path, Path | None]:
    """(clicks file, items file or None): ``path`` is the clicks file or the directory
    holding both files (``names``); ``items_path`` wins over the file next to it."""
    if path.is_dir():
        clicks_file, folder = path / names[0], path
    else:
        clicks_file, folder = path, path.parent
    if items_path is not None:
        return clicks_file, Path(items_path)
    items_file = folder / names[1]
    if not items_file.exists():
        if clicks_file.exists():  # else reading it fails, which says more
            logger.warning(
                "no %s next to %s: loading clicks without items", items_file.name, clicks_file
            )
        return clicks_file, None
    return clicks_file, items_file


def load_mind(
    path: str | Path, items_path: str | Path | None = None, history: bool = False
) -> ClickLog:
    """MIND ``behaviors.tsv`` (+ ``news.tsv`` next to it, or ``items_path``).

    ``path`` is ``behaviors.tsv`` or the directory holding it. See the module
    docstring for clicks, times and ``history``.
    """
    behaviors, news = _side_file(Path(path), ("behaviors.tsv", "news.tsv"), items_path)
    skipped: Counter = Counter()
    tally = _Tally(behaviors, skipped)
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    events: list[str] = []
    earliest: dict[str, tuple[int, str, str]] = {}  # user -> (ts, impression id, history)
    for no, line in _utf8_lines(behaviors, tally):
        cols = line.split("\t")
        if len(cols) != 5:
            tally.skip(no, "wrong number of columns")
            continue
        impression_id, user_id, time_text, hist, impressions = cols
        impression_id, user_id = impression_id.strip(), user_id.strip()
        if not impression_id:
            tally.skip(no, "missing impression_id")
            continue
        if not _ok_id(user_id):
            tally.skip(no, "bad user_id")
            continue
        try:
            t = parse_mind_time(time_text)
        except ValueError:
            tally.skip(no, "bad time")
            continue
        for token in impressions.split():
            news_id, sep, label = token.rpartition("-")
            if not sep or label not in ("0", "1") or not _ok_id(news_id):
                tally.skip(no, "impression without 0/1 label", whole_line=False)
            elif label == "1":
                users.append(user_id)
                items.append(news_id)
                ts.append(t)
                events.append(f"{impression_id}-{news_id}")
        if history:
            seen = earliest.get(user_id)
            if seen is None or t < seen[0]:
                earliest[user_id] = (t, impression_id, hist)
    tally.finish()
    for user_id, (t, impression_id, hist) in earliest.items():
        t_hist = max(t - 1000, 0)
        for k, news_id in enumerate(hist.split()):
            if not _ok_id(news_id):
                continue  # split() ids are never empty; only an over-long one lands here
            users.append(user_id)
            items.append(news_id)
            ts.append(t_hist)
            events.append(f"{impression_id}-h{k}-{news_id}")
    clicks = _batch(users, items, ts, np.ones(len(ts)), events)
    records = _read_news(news, skipped, _first_ts(clicks.ts)) if news is not None else []
    return ClickLog(clicks, records, f"mind:{behaviors}", dict(skipped))


def _wikidata_ids(text: str) -> list[str] | None:
    """WikidataIds of a MIND entity column; [] when empty, None when not valid JSON."""
    text = text.strip()
    if not text:
        return []
    try:
        entities = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entities, list):
        return None
    return [
        e["WikidataId"]
        for e in entities
        if isinstance(e, dict) and isinstance(e.get("WikidataId"), str) and e["WikidataId"]
    ]


def _read_news(path: Path, skipped: Counter, item_ts: int) -> list[dict]:
    """news.tsv: ``news_id, category, subcategory, title, abstract, url,
    title_entities, abstract_entities``; trailing columns may be missing."""
    tally = _Tally(path, skipped, ITEMS_PREFIX)
    items: dict[str, dict] = {}
    for no, line in _utf8_lines(path, tally):
        cols = line.split("\t")
        if len(cols) > 8:
            tally.skip(no, "wrong number of columns")
            continue
        cols += [""] * (8 - len(cols))
        news_id, category, subcategory, title = (c.strip() for c in cols[:4])
        if not _ok_id(news_id):
            tally.skip(no, "bad news_id")
            continue
        entities: list[str] = []
        for text in cols[6:8]:
            ids = _wikidata_ids(text)
            if ids is None:
                tally.skip(no, "invalid entity JSON (entities dropped)", whole_line=False)
            else:
                entities += ids
        record: dict = {"item_id": news_id, "ts": item_ts}
        if category:
            record["category"] = category
        if subcategory:
            record["subcategory"] = subcategory
        if entities:
            record["entities"] = list(dict.fromkeys(entities))
        if len(record) == 2:
            tally.skip(no, "item without metadata", whole_line=False)
            continue
        if title:
            record["title"] = title
        _keep(items, record, tally, no)
    tally.finish()
    return list(items.values())


# --------------------------------------------------------------------------- MovieLens


def _movielens_csv(path: Path) -> bool:
    """Whether ``path`` (a file or a folder) is MovieLens "latest" CSV (``ratings.csv``)."""
    if path.is_dir():
        return (path / "ratings.csv").exists() and not (path / "u.data").exists()
    return path.suffix == ".csv" or path.name.endswith(".csv.gz")


def load_movielens(path: str | Path, items_path: str | Path | None = None) -> ClickLog:
    """MovieLens ml-100k ``u.data`` (+ ``u.item`` next to it, or ``items_path``), or
    the CSV of MovieLens "latest" ``ratings.csv`` (+ ``movies.csv``).

    ``path`` is the ratings file or the directory holding it. Each rating is a
    click with ``weight = rating / 5`` at ``timestamp * 1000`` ms.
    """
    csv_format = _movielens_csv(Path(path))
    names = ("ratings.csv", "movies.csv") if csv_format else ("u.data", "u.item")
    data, item_file = _side_file(Path(path), names, items_path)
    skipped: Counter = Counter()
    tally = _Tally(data, skipped)
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    weights: list[float] = []
    events: list[str] = []
    for no, raw in _lines(data):
        parts = raw.strip().split(b",") if csv_format else raw.split()
        if not parts or parts == [b""] or (no == 1 and parts[0] == b"userId"):
            continue  # blank, or the CSV header
        tally.lines += 1
        if len(parts) != 4:
            tally.skip(no, "wrong number of columns")
            continue
        try:
            user_id, item_id = parts[0].decode("utf-8"), parts[1].decode("utf-8")
        except UnicodeDecodeError:
            tally.skip(no, "invalid UTF-8")
            continue
        if not (_ok_id(user_id) and _ok_id(item_id)):
            tally.skip(no, "id longer than 256 characters")
            continue
        try:
            rating = float(parts[2])
        except ValueError:
            tally.skip(no, "rating: must be a number")
            continue
        if not (rating > 0 and math.isfinite(rating)):
            tally.skip(no, "rating: must be > 0")
            continue
        try:
            seconds = int(parts[3])
        except ValueError:
            tally.skip(no, "timestamp: must be an integer")
            continue
        if not 0 <= seconds * 1000 <= TS_MAX:
            tally.skip(no, "timestamp: out of range")
            continue
        users.append(user_id)
        items.append(item_id)
        ts.append(seconds * 1000)
        weights.append(rating / 5.0)
        events.append(f"{user_id}-{item_id}-{seconds}")
    tally.finish()
    clicks = _batch(users, items, ts, weights, events)
    read = _read_movies_csv if csv_format else _read_movies
    records = read(item_file, skipped, _first_ts(clicks.ts)) if item_file else []
    return ClickLog(clicks, records, f"movielens:{data}", dict(skipped))


def _read_movies_csv(path: Path, skipped: Counter, item_ts: int) -> list[dict]:
    """movies.csv (UTF-8): ``movieId,title,genres`` with ``|``-separated genres;
    a title with a comma is quoted."""
    tally = _Tally(path, skipped, ITEMS_PREFIX)
    items: dict[str, dict] = {}
    for no, line in _utf8_lines(path, tally):
        if no == 1 and line.startswith("movieId"):
            tally.lines -= 1
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error:
            tally.skip(no, "not a CSV line")
            continue
        if len(fields) != 3:
            tally.skip(no, "wrong number of fields")
            continue
        item_id, title, genre_text = (f.strip() for f in fields)
        if not _ok_id(item_id):
            tally.skip(no, "bad movie id")
            continue
        genres = [g for g in genre_text.split("|") if g and g != "(no genres listed)"]
        if not genres:
            tally.skip(no, "item without metadata", whole_line=False)
            continue
        record: dict = {"item_id": item_id, "ts": item_ts, "category": genres[0], "tags": genres}
        if title:
            record["title"] = title
        _keep(items, record, tally, no)
    tally.finish()
    return list(items.values())


def _read_movies(path: Path, skipped: Counter, item_ts: int) -> list[dict]:
    """u.item (latin-1): ``movie id | title | release date | video release date |
    IMDb URL | 19 genre flags``."""
    tally = _Tally(path, skipped, ITEMS_PREFIX)
    items: dict[str, dict] = {}
    n_genres = len(ML_GENRES)
    for no, raw in _lines(path):
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line or line.isspace():
            continue
        tally.lines += 1
        fields = line.split("|")
        if len(fields) < 5 + n_genres:
            tally.skip(no, "wrong number of fields")
            continue
        flags = [f.strip() for f in fields[-n_genres:]]
        if any(f not in ("0", "1") for f in flags):
            tally.skip(no, "genre flags must be 0 or 1")
            continue
        item_id = fields[0].strip()
        if not _ok_id(item_id):
            tally.skip(no, "bad movie id")
            continue
        genres = [g for g, f in zip(ML_GENRES, flags, strict=True) if f == "1"]
        if not genres:
            tally.skip(no, "item without metadata", whole_line=False)
            continue
        record: dict = {"item_id": item_id, "ts": item_ts, "category": genres[0], "tags": genres}
        title = "|".join(fields[1 : len(fields) - 3 - n_genres]).strip()  # a title may hold "|"
        if title:
            record["title"] = title
        _keep(items, record, tally, no)
    tally.finish()
    return list(items.values())


# --------------------------------------------------------------------------- Globo.com


GLOBO_COLUMNS = ("user_id", "session_id", "click_article_id", "click_timestamp")


def load_globo(path: str | Path, items_path: str | Path | None = None) -> ClickLog:
    """The Globo.com news log: ``path`` is one ``clicks_hour_*.csv`` or a folder of
    them (read in name order). A click is a row; ``ts`` is ``click_timestamp``
    (ms), weight 1, event id ``session-ts-article``; a row repeating one already
    read (same event id) is skipped. Item records come from ``items_path`` only.
    """
    path = Path(path)
    files = sorted(path.glob("clicks_hour_*.csv")) if path.is_dir() else [path]
    if not files:
        raise LoadError(f"{path}: no clicks_hour_*.csv files", path)
    skipped: Counter = Counter()
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    events: list[str] = []
    seen: set[str] = set()
    for file in files:
        tally = _Tally(file, skipped)
        columns: dict[str, int] | None = None
        for no, line in _utf8_lines(file, tally):
            fields = line.split(",")
            if columns is None:
                columns = {name: i for i, name in enumerate(fields)}
                tally.lines -= 1  # the header
                missing = [c for c in GLOBO_COLUMNS if c not in columns]
                if missing:
                    raise LoadError(f"{file}: no column {missing[0]!r}", file, no)
                continue
            if len(fields) != len(columns):
                tally.skip(no, "wrong number of columns")
                continue
            user, session, item, when = (fields[columns[c]].strip() for c in GLOBO_COLUMNS)
            if not (_ok_id(user) and _ok_id(item)):
                tally.skip(no, "bad user or article id")
                continue
            try:
                t = int(when)
            except ValueError:
                tally.skip(no, "click_timestamp: must be an integer")
                continue
            if not 0 <= t <= TS_MAX:
                tally.skip(no, "click_timestamp: out of range")
                continue
            event = f"{session}-{t}-{item}"
            if event in seen:
                tally.skip(no, "repeated row", whole_line=False)
                continue
            seen.add(event)
            users.append(user)
            items.append(item)
            ts.append(t)
            events.append(event)
        tally.finish()
    clicks = _batch(users, items, ts, [1.0] * len(ts), events)
    records = _read_item_jsonl(Path(items_path), skipped) if items_path else []
    return ClickLog(clicks, records, f"globo:{path}", dict(skipped))
