"""Click logs in JSONL, MIND and MovieLens layouts -> clicks and item records."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from stream.errors import BadRecord, ClusterstreamError, ConfigError
from stream.io.loaders import ML_GENRES, ClickLog, LoadError, load, parse_mind_time
from stream.io.synth import MALFORMED_KINDS, SynthConfig, generate, write_dataset, write_jsonl
from stream.wire.schemas import validate


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def rows(log: ClickLog) -> list[tuple]:
    c = log.clicks
    return list(
        zip(c.user_ids, c.item_ids, c.ts.tolist(), c.weights.tolist(), c.event_ids, strict=True)
    )


def assert_valid_items(log: ClickLog) -> None:
    for record in log.items:
        assert validate("item", record) is record


# --------------------------------------------------------------------------- jsonl


def click(event_id, user_id, item_id, ts, **extra) -> dict:
    return {"event_id": event_id, "user_id": user_id, "item_id": item_id, "ts": ts, **extra}


def test_jsonl_sorts_by_time_and_counts_bad_lines(tmp_path):
    path = tmp_path / "clicks.jsonl"
    write_jsonl(
        path,
        [
            click("e1", "u1", "i1", 3000),
            click("e2", "u2", "i2", 1000, weight=2.5, context={"page": "home"}),
            b'{"event_id": "e3", "user_id": "u1"',  # truncated
            b"",  # blank: ignored, not counted
            click("e4", "u3", "i1", 1000),  # same ts as e2: stays after it
            {"event_id": "e5", "item_id": "i1", "ts": 5},
            click("e6", "u1", "i3", "2000"),
            click("e7", "u2", "i3", 2000.0),
            click("e8", "u2", "i3", 4000, weight=0),
        ],
    )
    log = load(path, "jsonl")
    assert rows(log) == [
        ("u2", "i2", 1000, 2.5, "e2"),
        ("u3", "i1", 1000, 1.0, "e4"),
        ("u2", "i3", 2000, 1.0, "e7"),
        ("u1", "i1", 3000, 1.0, "e1"),
    ]
    assert log.clicks.ts.dtype == np.int64
    assert log.skipped == {
        "invalid JSON": 1,
        "missing field: user_id": 1,
        "ts: must be an integer": 1,
        "weight: must be > 0": 1,
    }
    assert log.n_skipped == 4
    assert log.items == []
    assert log.source == f"jsonl:{path}"


def test_jsonl_items_valid_deduplicated_by_ts(tmp_path):
    clicks = tmp_path / "clicks.jsonl"
    write_jsonl(clicks, [click("e1", "u1", "i1", 1000)])
    items = tmp_path / "items.jsonl"
    write_jsonl(
        items,
        [
            {"item_id": "i1", "ts": 10, "category": "sport", "tags": ["tennis"]},
            {"item_id": "i2", "ts": 10, "vector": [0.5, -1, 2.0]},
            {"item_id": "i1", "ts": 20, "category": "news"},  # newer: replaces
            {"item_id": "i1", "ts": 5, "category": "old"},  # older: ignored
            {"item_id": "i3", "ts": 10},  # no vector, no metadata
            {"item_id": "i4", "ts": 10, "vector": [1.0, True]},  # a bool is no number
            b"[1, 2]",
            b"{oops",
            {"item_id": "i5", "ts": 10, "category": "", "tags": [], "entities": ["Q1"]},
        ],
    )
    log = load(clicks, "jsonl", items)
    assert log.items == [
        {"item_id": "i1", "ts": 20, "category": "news"},
        {"item_id": "i2", "ts": 10, "vector": [0.5, -1, 2.0]},
        {"item_id": "i5", "ts": 10, "category": "", "tags": [], "entities": ["Q1"]},
    ]
    assert_valid_items(log)
    assert log.skipped == {
        "items: duplicate item_id": 2,
        "items: needs one of: vector, category, subcategory, tags, entities": 1,
        "items: vector[1]: True is not of type 'number'": 1,
        "items: not an object": 1,
        "items: invalid JSON": 1,
    }


def test_jsonl_gzip(tmp_path):
    path = tmp_path / "clicks.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(orjson.dumps(click("e1", "u1", "i1", 7)) + b"\n")
    assert rows(load(path, "jsonl")) == [("u1", "i1", 7, 1.0, "e1")]


def test_synth_dataset_round_trips_through_jsonl(tmp_path):
    data = generate(
        SynthConfig(n_users=200, n_items=100, n_events=3000, seed=3, malformed=0.05,
                    out_of_order=0.1, dim=8)
    )  # fmt: skip
    paths = write_dataset(tmp_path, data)
    log = load(paths["clicks"], "jsonl", paths["items"])

    good = np.setdiff1d(np.arange(data.n_events), data.malformed_index)
    order = good[np.argsort(data.click_ts[good], kind="stable")]
    want = data.click_batch()
    assert log.clicks.user_ids == [want.user_ids[i] for i in order]
    assert log.clicks.item_ids == [want.item_ids[i] for i in order]
    assert log.clicks.event_ids == [want.event_ids[i] for i in order]
    assert log.clicks.ts.tolist() == data.click_ts[order].tolist()
    assert log.clicks.weights.tolist() == data.click_weight[order].tolist()

    reasons = {
        "invalid_json": "invalid JSON",
        "missing_user_id": "missing field: user_id",
        "ts_string": "ts: must be an integer",
        "negative_weight": "weight: must be > 0",
        "json_array": "not an object",
    }
    assert set(reasons) == set(MALFORMED_KINDS)
    kinds = np.bincount(data.malformed_kind, minlength=len(MALFORMED_KINDS))
    assert log.skipped == {
        reasons[k]: int(n) for k, n in zip(MALFORMED_KINDS, kinds, strict=False) if n
    }
    assert log.items == list(data.item_records(with_vectors=True))

    meta = load(paths["clicks"], "jsonl", paths["items_meta"])
    assert meta.items == list(data.item_records(with_vectors=False))
    assert_valid_items(meta)


# --------------------------------------------------------------------------- errors


def test_missing_file_is_one_line_error(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(LoadError, match="nope.jsonl: cannot read") as info:
        load(path, "jsonl")
    assert isinstance(info.value, BadRecord) and isinstance(info.value, ClusterstreamError)
    assert "\n" not in str(info.value) and info.value.path == str(path)


def test_directory_is_not_a_jsonl_file(tmp_path):
    with pytest.raises(LoadError, match="cannot read"):
        load(tmp_path, "jsonl")


def test_mostly_bad_file_names_file_and_first_bad_line(tmp_path):
    path = tmp_path / "clicks.jsonl"
    path.write_bytes(b"\n" + orjson.dumps(click("e1", "u1", "i1", 1)) + b"\nnot json\n[]\n")
    with pytest.raises(LoadError) as info:
        load(path, "jsonl")
    assert str(info.value) == f"{path}: 2 of 3 lines are bad (line 3: invalid JSON)"
    assert info.value.line == 3


def test_binary_file_is_unparseable(tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes(gzip.compress(b"196\t242\t3\t881250949\n" * 50))
    with pytest.raises(LoadError, match=r"u\.data: 1 of 1 lines are bad \(line 1: "):
        load(path, "movielens")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown format 'csv'"):
        load("x", "csv")
    with pytest.raises(ConfigError, match="mind"):
        load("x", "jsonl", history=True)


# --------------------------------------------------------------------------- MIND

BEHAVIORS = [
    "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN10-1 N11-0 N12-1",
    "2\tU2\t11/15/2019 8:00:00 AM\t\tN11-0 N13-0",  # an impression without a click
    "3\tU1\t11/14/2019 11:59:59 PM\tN1 N2\tN13-1",  # U1's earliest impression
    "4\tU3\tnot a time\tN1\tN10-1",
    "5\tU3\t11/15/2019 9:00:00 AM",
    "",
    "6\tU3\t11/15/2019 12:30:00 PM\tN5\tN14-1 N15 N16-x",
    "7\tU4\t11/15/2019 8:55:22 AM\t\tN10-1\r",
]
NEWS = [
    'N10\tsports\tfootball_nfl\tTen\tAbstract\thttps://x/10\t[{"Label": "A", "WikidataId": "Q1"}]\t[{"WikidataId": "Q2"}, {"WikidataId": "Q1"}]',
    "N11\tnews\tnewsus\tEleven\tabstract\thttps://x/11",  # no entity columns
    "N12\t\t\tNo metadata\t\t\t[]\t[]",
    "N13\tlifestyle\t\tThirteen\t\t\t\t",  # empty entity columns
    "N10\tsports\tgolf\tTen again\t\t\t[]\t[]",  # duplicate: the later line wins
    "N14\tweather\tweathertoday\tFourteen\t\t\tnot json\t[]",
    "too\tmany\tcolumns\t\t\t\t\t\t\t",
]
A = ms(2019, 11, 14, 23, 59, 59)
B = ms(2019, 11, 15, 8, 55, 22)
C = ms(2019, 11, 15, 12, 30, 0)


@pytest.fixture
def mind_dir(tmp_path):
    folder = tmp_path / "MINDsmall_train"
    folder.mkdir()
    (folder / "behaviors.tsv").write_text("\n".join(BEHAVIORS) + "\n", encoding="utf-8")
    (folder / "news.tsv").write_text("\n".join(NEWS) + "\n", encoding="utf-8")
    return folder


def news_items(item_ts: int) -> list[dict]:
    return [
        {"item_id": "N10", "ts": item_ts, "category": "sports", "subcategory": "golf",
         "title": "Ten again"},
        {"item_id": "N11", "ts": item_ts, "category": "news", "subcategory": "newsus",
         "title": "Eleven"},
        {"item_id": "N13", "ts": item_ts, "category": "lifestyle", "title": "Thirteen"},
        {"item_id": "N14", "ts": item_ts, "category": "weather", "subcategory": "weathertoday",
         "title": "Fourteen"},
    ]  # fmt: skip


NEWS_SKIPPED = {
    "items: item without metadata": 1,
    "items: duplicate item_id": 1,
    "items: invalid entity JSON (entities dropped)": 1,
    "items: wrong number of columns": 1,
}


def test_mind_time():
    assert parse_mind_time("11/15/2019 8:55:22 AM") == B
    assert parse_mind_time("11/14/2019 11:59:59 PM") == A
    assert parse_mind_time("1/1/2020 12:00:00 AM") == ms(2020, 1, 1, 0, 0, 0)
    assert parse_mind_time("1/1/2020 12:00:01 PM") == ms(2020, 1, 1, 12, 0, 1)
    for bad in ("2019-11-15 08:55:22", "13/1/2019 1:00:00 AM", "1/1/2019 1:61:00 AM", "x"):
        with pytest.raises(ValueError):
            parse_mind_time(bad)


def test_mind_clicks_are_labelled_impressions(mind_dir):
    log = load(mind_dir, "mind")
    assert rows(log) == [
        ("U1", "N13", A, 1.0, "3-N13"),
        ("U1", "N10", B, 1.0, "1-N10"),
        ("U1", "N12", B, 1.0, "1-N12"),
        ("U4", "N10", B, 1.0, "7-N10"),
        ("U3", "N14", C, 1.0, "6-N14"),
    ]
    assert log.skipped == {
        "bad time": 1,
        "wrong number of columns": 1,
        "impression without 0/1 label": 2,
        **NEWS_SKIPPED,
    }
    assert log.items == news_items(A - 1)
    assert_valid_items(log)
    assert log.source == f"mind:{mind_dir / 'behaviors.tsv'}"


def test_mind_entities(tmp_path):
    (tmp_path / "behaviors.tsv").write_text("1\tU1\t11/15/2019 8:55:22 AM\t\tN10-1\n")
    (tmp_path / "news.tsv").write_text(NEWS[0] + "\n")
    log = load(tmp_path / "behaviors.tsv", "mind")
    assert log.items == [
        {"item_id": "N10", "ts": B - 1, "category": "sports", "subcategory": "football_nfl",
         "entities": ["Q1", "Q2"], "title": "Ten"}
    ]  # fmt: skip
    assert_valid_items(log)


def test_mind_history_once_per_user_before_first_impression(mind_dir):
    log = load(mind_dir, "mind", history=True)
    assert rows(log) == [
        ("U1", "N1", A - 1000, 1.0, "3-h0-N1"),
        ("U1", "N2", A - 1000, 1.0, "3-h1-N2"),
        ("U1", "N13", A, 1.0, "3-N13"),
        ("U1", "N10", B, 1.0, "1-N10"),
        ("U1", "N12", B, 1.0, "1-N12"),
        ("U4", "N10", B, 1.0, "7-N10"),
        ("U3", "N5", C - 1000, 1.0, "6-h0-N5"),
        ("U3", "N14", C, 1.0, "6-N14"),
    ]
    assert log.items == news_items(A - 1001)


def test_mind_behaviors_file_with_items_elsewhere(mind_dir, tmp_path):
    other = tmp_path / "elsewhere.tsv"
    other.write_text("N13\tlifestyle\n")
    log = load(mind_dir / "behaviors.tsv", "mind", items_path=other)
    assert log.items == [{"item_id": "N13", "ts": A - 1, "category": "lifestyle"}]
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "behaviors.tsv").write_text(BEHAVIORS[0] + "\n")
    assert load(alone, "mind").items == []  # no news.tsv: clicks only
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="empty/behaviors.tsv: cannot read"):
        load(empty, "mind")
    with pytest.raises(LoadError, match="nowhere: cannot read"):
        load(tmp_path / "nowhere", "mind")


# --------------------------------------------------------------------------- MovieLens


def movie(movie_id: str, title: str, *genres: str) -> str:
    flags = ["1" if g in genres else "0" for g in ML_GENRES]
    return "|".join([movie_id, title, "01-Jan-1995", "", "http://us.imdb.com/x", *flags])


U_DATA = [
    "196\t242\t3\t881250949",
    "186\t302\t3\t891717742",
    "22\t377\t1\t878887116",
    "bad line",
    "244\t51\t0\t880606923",
    "166\t346\t5\t886397596",
    "22\t242\tx\t878887117",
]
U_ITEM = [
    movie("242", "Kolya (1996)", "Comedy"),
    movie("302", "L.A. Confidential (1997)", "Crime", "Film-Noir", "Mystery", "Thriller"),
    movie("377", "Café Flore (1996)", "Drama", "Romance"),
    movie("346", "Jackie Brown (1997)"),  # no genre: left out
    movie("242", "Kolya (1996)", "Comedy"),
    "51|Legends of the Fall (1994)",
]


@pytest.fixture
def ml_dir(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("\n".join(U_DATA) + "\n")
    (folder / "u.item").write_bytes(("\n".join(U_ITEM) + "\n").encode("latin-1"))
    return folder


def test_movielens_ratings_are_weighted_clicks(ml_dir):
    log = load(ml_dir, "movielens")
    assert rows(log) == [
        ("22", "377", 878887116000, 0.2, "22-377-878887116"),
        ("196", "242", 881250949000, 0.6, "196-242-881250949"),
        ("166", "346", 886397596000, 1.0, "166-346-886397596"),
        ("186", "302", 891717742000, 0.6, "186-302-891717742"),
    ]
    item_ts = 878887116000 - 1
    assert log.items == [
        {"item_id": "242", "ts": item_ts, "category": "Comedy", "tags": ["Comedy"],
         "title": "Kolya (1996)"},
        {"item_id": "302", "ts": item_ts, "category": "Crime",
         "tags": ["Crime", "Film-Noir", "Mystery", "Thriller"],
         "title": "L.A. Confidential (1997)"},
        {"item_id": "377", "ts": item_ts, "category": "Drama", "tags": ["Drama", "Romance"],
         "title": "Café Flore (1996)"},
    ]  # fmt: skip
    assert_valid_items(log)
    assert log.skipped == {
        "wrong number of columns": 1,
        "rating: must be > 0": 1,
        "rating: must be a number": 1,
        "items: item without metadata": 1,
        "items: duplicate item_id": 1,
        "items: wrong number of fields": 1,
    }
    assert load(ml_dir / "u.data", "movielens").items == log.items
    assert log.source == f"movielens:{ml_dir / 'u.data'}"


def test_movielens_genre_order_is_ml100k():
    assert len(ML_GENRES) == 19
    assert ML_GENRES[:3] == ("unknown", "Action", "Adventure") and ML_GENRES[-1] == "Western"


# --------------------------------------------------------------------------- MovieLens latest CSV


def test_movielens_latest_csv_folder_and_file(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,964982703\n"
        "2,11,2.5,964981247\n"
        "1,x,,oops\n"
        "2,10,5.0,964981000\n"
    )
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"Heat, the film (1995)",Action|Crime\n'
        "11,Untitled (2001),(no genres listed)\n"
    )
    log = load(tmp_path, "movielens")
    assert rows(log) == [
        ("2", "10", 964981000000, 1.0, "2-10-964981000"),
        ("2", "11", 964981247000, 0.5, "2-11-964981247"),
        ("1", "10", 964982703000, 0.8, "1-10-964982703"),
    ]
    assert log.skipped == {"rating: must be a number": 1, "items: item without metadata": 1}
    (movie,) = log.items
    assert movie["item_id"] == "10" and movie["tags"] == ["Action", "Crime"]
    assert movie["title"] == "Heat, the film (1995)"
    assert_valid_items(log)
    # the ratings file itself works too, and finds movies.csv beside it
    again = load(tmp_path / "ratings.csv", "movielens")
    assert rows(again) == rows(log) and again.items == log.items


def test_item_records_jsonl_go_with_every_format(tmp_path):
    """`embed` writes item records as JSONL; mind and movielens logs take them as --items."""
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n2\t11\t4\t200\n")
    vectors = tmp_path / "vectors.jsonl"
    vectors.write_text(
        '{"item_id": "10", "ts": 0, "vector": [1.0, 0.0]}\n'
        '{"item_id": "11", "ts": 0, "vector": [0.0, 1.0]}\n'
    )
    log = load(tmp_path, "movielens", vectors)
    assert [r["item_id"] for r in log.items] == ["10", "11"]
    assert log.items[0]["vector"] == [1.0, 0.0]
    assert len(log.clicks) == 2


def test_globo_hourly_files_in_a_folder(tmp_path):
    header = "user_id,session_id,session_start,session_size,click_article_id,click_timestamp,x\n"
    (tmp_path / "clicks_hour_000.csv").write_text(
        header + "7,s1,0,2,100,1506826828020,4\n7,s1,0,2,101,1506826858020,4\n"
    )
    (tmp_path / "clicks_hour_001.csv").write_text(
        header + "8,s2,0,1,100,1506826800000,4\n"
        "7,s1,0,2,101,1506826858020,4\n"  # the same row again, from the next hour's file
        "9,s3,0,1,102,soon,4\n"
    )
    log = load(tmp_path, "globo")
    assert rows(log) == [
        ("8", "100", 1506826800000, 1.0, "s2-1506826800000-100"),
        ("7", "100", 1506826828020, 1.0, "s1-1506826828020-100"),
        ("7", "101", 1506826858020, 1.0, "s1-1506826858020-101"),
    ]
    assert log.skipped == {"repeated row": 1, "click_timestamp: must be an integer": 1}
    assert log.items == []
    one = load(tmp_path / "clicks_hour_000.csv", "globo")
    assert len(one.clicks) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no clicks_hour"):
        load(tmp_path / "empty", "globo")
