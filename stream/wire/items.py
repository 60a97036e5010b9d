"""Item records (``schemas/item.schema.json``) on the compacted items topic:
key the UTF-8 item id, value a JSON object with a vector or the metadata a
vector is derived from. A null value is a tombstone (the item is gone).

>>> key, value = item_message({"item_id": "i1", "ts": 5, "category": "news"})
>>> key, value
(b'i1', b'{"item_id":"i1","ts":5,"category":"news"}')
>>> decode_item(value)["category"]
'news'
>>> decode_item(b"[1]")
Traceback (most recent call last):
...
stream.errors.BadRecord: not an object
"""

from __future__ import annotations

import orjson

from stream.errors import BadRecord
from stream.wire.schemas import validate


def item_message(record: dict) -> tuple[bytes, bytes]:
    """``(key, value)`` of an item record; the record is not validated
    (producers are expected to follow the schema)."""
    return record["item_id"].encode("utf-8"), orjson.dumps(record)


def decode_item(value: bytes) -> dict:
    """Parse and validate one item value; raises :class:`~stream.errors.BadRecord`
    with a one-line reason."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise BadRecord("invalid JSON") from None
    if not isinstance(record, dict):
        raise BadRecord("not an object")
    return validate("item", record)
