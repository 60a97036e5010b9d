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


# -- markers --------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reaches the embedded broker ``broker``, so that
    ``pytest -m "not broker"`` (``make check``) is the fast loop.

    A test is marked when it uses the ``broker`` fixture (directly or through
    another fixture) or is a doctest that starts an ``EmbeddedBroker``; the
    marker written by hand in a module stays the documentation, this makes
    forgetting it harmless.
    """
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
        elif isinstance(item, pytest.DoctestItem) and _starts_broker(item):
            item.add_marker(pytest.mark.broker)


def _starts_broker(item: pytest.DoctestItem) -> bool:
    test = item.dtest
    return test is not None and any("EmbeddedBroker(" in ex.source for ex in test.examples)
