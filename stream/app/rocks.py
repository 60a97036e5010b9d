"""RocksDB as every store of a worker opens it: options, the shared block
cache, what a store holds in memory, and the 8-byte little-endian integers
of the meta records."""

from __future__ import annotations

from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DataBlockIndexType,
    DBCompressionType,
    Options,
    Rdict,
    WriteOptions,
)

BLOCK_CACHE_MB = 64  # RocksDB block cache, one for every store of the process
_BLOCK_CACHE = Cache(BLOCK_CACHE_MB << 20)  # memory is taken as blocks are read


def store_options() -> Options:
    """RocksDB options of every store: tuned for the hot path's point lookups.

    The hot path reads users by key, many of them new (not in the store): a
    bloom filter (10 bits a key) in every table and a whole-key bloom filter
    in the memtable answer "absent" without reading a data block, and a hash
    index inside each data block finds a present key without a binary search.
    No compression: a user record is mostly float32 vector, which does not
    compress, and every read would pay to decompress its block (the effect:
    ``clusterstream bench e2e --users 1000000``, every click a new user).
    The block cache is shared by all stores of the process.
    """
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
    table.set_block_cache(_BLOCK_CACHE)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_block_based_table_factory(table)
    options.set_memtable_prefix_bloom_ratio(0.02)
    options.set_memtable_whole_key_filtering(True)
    options.set_compression_type(DBCompressionType.none())
    return options


def _no_wal() -> WriteOptions:
    """Writes that skip the write-ahead log: several times cheaper, which
    matters because rocksdict holds the GIL while it writes. Safe only for
    records the users changelog or the cf-deltas topic holds too (see
    :mod:`stream.app.partition`)."""
    options = WriteOptions()
    options.disable_wal = True
    return options


NO_WAL = _no_wal()


def open_db(path: Path, write_buffer_bytes: int | None = None) -> Rdict:
    """Open (create) the store at ``path``; ``write_buffer_bytes``: the size
    of a memtable, RocksDB's default (64 MB) when None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = store_options()
    if write_buffer_bytes is not None:
        options.set_write_buffer_size(write_buffer_bytes)
    return Rdict(str(path), options=options)


def read_int(value: bytes | None, default: int = 0) -> int:
    return default if value is None else int.from_bytes(value, "little", signed=True)


def int_bytes(value: int) -> bytes:
    return int(value).to_bytes(8, "little", signed=True)


def db_property(db: Rdict, name: str) -> int:
    """An integer property of the store ``db``, e.g. ``rocksdb.estimate-num-keys`` (0 if unknown)."""
    return int(db.property_int_value(name) or 0)


def db_memory(db: Rdict) -> dict[str, int]:
    """Bytes RocksDB holds in memory for the store ``db``: its memtables and
    table readers (index and filter blocks); the block cache is shared
    (:func:`block_cache_bytes`)."""
    return {
        "memtable_bytes": db_property(db, "rocksdb.cur-size-all-mem-tables"),
        "table_readers_bytes": db_property(db, "rocksdb.estimate-table-readers-mem"),
    }


def block_cache_bytes() -> int:
    """Bytes in the RocksDB block cache shared by every store of the process."""
    return int(_BLOCK_CACHE.get_usage())
