"""User records on the users changelog: keys, rows and the size check."""

from __future__ import annotations

from types import SimpleNamespace as Msg

import numpy as np
import pytest

from stream.core.state import blank_rows, user_dtype
from stream.errors import ConfigError
from stream.wire.changelog import USER_PREFIX, user_id_of, user_key, user_rows


def test_user_keys_are_pinned_and_round_trip():
    assert user_key("ann") == b"u:ann" and user_key("ü") == b"u:\xc3\xbc"
    assert user_id_of(user_key("ü-ñ")) == "ü-ñ"


def test_user_rows_skip_meta_records_and_tombstones_and_keep_order():
    dtype = user_dtype(4, 2, 3)
    rows = blank_rows(dtype, 2)
    rows["mean"] = [[1, 0, 0, 0], [0, 0.5, 0, 0]]
    rows["weight"] = [2.0, 3.0]
    msgs = [
        Msg(key=user_key("b"), value=rows[1].tobytes()),
        Msg(key=b"m:next_offset", value=b"\x01" * 8),
        Msg(key=user_key("gone"), value=None),
        Msg(key=user_key("a"), value=rows[0].tobytes()),
    ]
    keys, got = user_rows(msgs, dtype, "app-users-changelog")
    assert keys == [b"u:b", b"u:a"] and all(k.startswith(USER_PREFIX) for k in keys)
    assert got.tobytes() == rows[[1, 0]].tobytes()
    assert user_rows([], dtype, "t")[1].shape == (0,)


def test_a_record_of_another_dim_says_which_dim_would_fit():
    written = blank_rows(user_dtype(8, 2, 3), 1).tobytes()
    with pytest.raises(ConfigError, match="dim 8 would fit"):
        user_rows([Msg(key=user_key("a"), value=written)], user_dtype(4, 2, 3), "app-uc")
    assert len(written) == user_dtype(8, 2, 3).itemsize != np.dtype(user_dtype(4, 2, 3)).itemsize
