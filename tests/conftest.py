"""Shared pytest fixtures.

Sections: naming helpers, then the embedded broker. Add new fixtures under the
section they belong to (or a new section), keep each one small.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from stream.io.broker import EmbeddedBroker

# -- naming ---------------------------------------------------------------------


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of names no other test uses: ``unique_name("clicks") -> "clicks-3f9a..."``.

    Use it for every topic, consumer group and app id: the session broker is
    shared and auto-creates topics on first use.
    """

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


# -- embedded broker ------------------------------------------------------------


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole session (fails, never skips, without the binary)."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    """``bootstrap_servers`` of the session broker."""
    return broker.bootstrap
