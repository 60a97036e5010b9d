"""User records on the users changelog topic (compacted, one partition per
clicks partition): key ``u:<user_id>`` in UTF-8, value the user's row as raw
bytes of the store's record dtype (:func:`stream.core.state.user_dtype`:
float32 vector, memberships, recent items; never JSON). The store's own
bookkeeping goes to the same topic under ``m:`` keys, and what the partition's
clicks taught the item learner (:mod:`stream.core.itemlearn`) under
``l:<item_id>``: float64 raw bytes, the clicks then the sum of ``dim``. Readers
of user vectors skip both. The learnt-items topic carries the same ``l:``
records, in the partition number they come from (:mod:`stream.app.learnt`).

>>> user_key("ann"), user_id_of(b"u:ann")
(b'u:ann', 'ann')
>>> learnt_key("n1"), learnt_id_of(b"l:n1")
(b'l:n1', 'n1')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream.errors import ConfigError

USER_PREFIX = b"u:"
LEARNT_PREFIX = b"l:"


def user_key(user_id: str) -> bytes:
    """The changelog key of a user."""
    return USER_PREFIX + user_id.encode("utf-8")


def user_id_of(key: bytes) -> str:
    """The user id of a changelog key made by :func:`user_key`."""
    return key[len(USER_PREFIX) :].decode("utf-8")


def learnt_key(item_id: str) -> bytes:
    """The changelog key of what a partition's clicks taught about an item."""
    return LEARNT_PREFIX + item_id.encode("utf-8")


def learnt_id_of(key: bytes) -> str:
    """The item id of a changelog key made by :func:`learnt_key`."""
    return key[len(LEARNT_PREFIX) :].decode("utf-8")


def user_rows(records: Sequence, dtype: np.dtype, topic: str) -> tuple[list[bytes], np.ndarray]:
    """Keys and rows ((n,) of ``dtype``) of the user records among ``records``
    (consumed messages with ``.key`` and ``.value``), in their order; tombstones
    and meta records are left out. Raises :class:`~stream.errors.ConfigError`
    (one line) when a record's length does not fit ``dtype``: the reader runs
    with other dim / top_m / recent settings than the app that wrote it."""
    users = [m for m in records if m.key and m.key.startswith(USER_PREFIX) and m.value]
    if sum(len(m.value) for m in users) != len(users) * dtype.itemsize:
        raise ConfigError(_size_mismatch(topic, dtype, users))
    if not users:
        return [], np.zeros(0, dtype=dtype)
    rows = np.frombuffer(b"".join(m.value for m in users), dtype=dtype)
    return [m.key for m in users], rows


def _size_mismatch(topic: str, dtype: np.dtype, users: list) -> str:
    """One line on user records whose length does not fit ``dtype`` (other settings)."""
    got = next(len(m.value) for m in users if len(m.value) != dtype.itemsize)
    dim, top_m = dtype["mean"].shape[0], dtype["cluster_ids"].shape[0]
    rest = dtype.itemsize - 4 * dim  # bytes that do not depend on dim
    fits = f"; dim {(got - rest) // 4} would fit" if got > rest and (got - rest) % 4 == 0 else ""
    return (
        f"{topic}: a user record holds {got} bytes, {dtype.itemsize} expected for dim {dim}, "
        f"top_m {top_m}, recent_items {dtype['recent'].shape[0]}{fits}: "
        "set the app's CLUSTERSTREAM_DIM / _TOP_M / _RECENT_ITEMS"
    )
