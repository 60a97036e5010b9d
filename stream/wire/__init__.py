"""Wire formats: each topic's keys and values, encoded and decoded beside the
schema that describes them (``schemas/<name>.schema.json``, read by
:mod:`stream.wire.schemas`), and the one partitioner every producer uses.

| topic | module |
|---|---|
| clicks | :mod:`stream.wire.clicks` |
| assignments | :mod:`stream.wire.assignments` |
| cf-deltas (``source`` header) | :mod:`stream.wire.cf_deltas` |
| clicks-dlq, items-dlq | :mod:`stream.wire.dlq` |
| items | :mod:`stream.wire.items` |
| centres | :mod:`stream.wire.centres` |
| users-changelog (user records), learnt-items | :mod:`stream.wire.changelog` |
| cluster-candidates | :mod:`stream.wire.candidates` |
| workers | :mod:`stream.wire.workers` |
| every keyed topic: partition of a key | :mod:`stream.wire.partition` |

Below the Kafka plumbing (:mod:`stream.io`) and the app: nothing here
imports either (``tests/unit/test_layering.py``).
"""
