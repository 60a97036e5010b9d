"""Benchmark of the click decoder (a script, not a test).

Prints one JSON line with the cost per click, in microseconds, of:

- ``decode_clicks_us``: :func:`stream.wire.clicks.decode_clicks` (parse + checks + batch)
- ``orjson_loads_us``: ``orjson.loads`` alone, the floor
- ``orjson_jsonschema_us``: ``orjson.loads`` + ``jsonschema`` validation of every
  record, the slow alternative (run on at most ``--schema-n`` clicks)

Clicks are synthetic and valid, with random ids, decoded in batches of
``--batch`` as the hot path does after ``getmany``. Each figure is the best of
``--repeats`` runs of CPU time (``time.process_time``), which is steadier than
wall time on a shared machine.

    python tests/bench/bench_decode.py [--n 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import orjson

from stream.wire.clicks import decode_clicks, encode_click
from stream.wire.schemas import validator


def make_values(n: int, seed: int) -> list[bytes]:
    """``n`` encoded valid clicks with random ids; about a third carry a weight."""
    rng = random.Random(seed)
    values = []
    for i in range(n):
        record = {
            "event_id": f"{rng.getrandbits(128):032x}",
            "user_id": f"u{rng.randrange(1_000_000)}",
            "item_id": f"N{rng.randrange(100_000)}",
            "ts": 1_700_000_000_000 + i * 7,
        }
        if rng.random() < 0.33:
            record["weight"] = round(rng.uniform(0.1, 5.0), 3)
        values.append(encode_click(record))
    return values


def per_click_us(fn, values: list[bytes], batch: int, repeats: int) -> float:
    """Best CPU time per value of ``fn(batch_of_values)`` over ``repeats`` runs, in us."""
    batches = [values[i : i + batch] for i in range(0, len(values), batch)]
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for chunk in batches:
            fn(chunk)
        best = min(best, time.process_time() - start)
    return best / len(values) * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of clicks")
    parser.add_argument("--batch", type=int, default=1000, help="clicks per decode call")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (best kept)")
    parser.add_argument("--schema-n", type=int, default=20_000, help="clicks for jsonschema")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    values = make_values(args.n, args.seed)
    batch, rejected = decode_clicks(values)
    assert len(batch) == args.n and not rejected, "synthetic clicks must all be valid"

    loads = orjson.loads
    click_validator = validator("click")

    def loads_only(chunk):
        return [loads(v) for v in chunk]

    def loads_and_jsonschema(chunk):
        return [click_validator.is_valid(loads(v)) for v in chunk]

    schema_values = values[: args.schema_n]
    result = {
        "n": args.n,
        "batch": args.batch,
        "clock": "process_time, best of repeats",
        "decode_clicks_us": round(per_click_us(decode_clicks, values, args.batch, args.repeats), 3),
        "orjson_loads_us": round(per_click_us(loads_only, values, args.batch, args.repeats), 3),
        "orjson_jsonschema_us": round(
            per_click_us(
                loads_and_jsonschema, schema_values, args.batch, max(1, args.repeats // 2)
            ),
            3,
        ),
        "jsonschema_n": len(schema_values),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
