"""The worker's aiokafka clients never ask the broker to create the app's own
topics (a broker back empty would create them with its default partition
count before the worker re-creates them with theirs); other topics as before."""

from __future__ import annotations

from aiokafka import client
from aiokafka.protocol.metadata import MetadataRequest_v5

from stream.io import kafka


def test_metadata_requests_for_the_apps_topics_do_not_create_them(monkeypatch):
    # restored after the test: the patch is process-wide
    monkeypatch.setattr(client, "MetadataRequest", client.MetadataRequest)
    monkeypatch.setattr(kafka, "_NOT_AUTO_CREATED", set())
    assert kafka.no_topic_auto_creation(["app-clicks", "app-cf-deltas"])
    assert kafka.no_topic_auto_creation(["app-workers"])  # once: names are added

    def built(topics):
        return client.MetadataRequest(topics).build(MetadataRequest_v5)

    assert built(["app-clicks"]).allow_auto_topic_creation is False
    assert built(["app-workers", "app-cf-deltas"]).allow_auto_topic_creation is False
    # faust's own topics, and a request for every topic, keep aiokafka's default
    assert built(["app-__assignor-__leader"]).allow_auto_topic_creation is True
    assert built(None).topics is None
    assert (
        client.MetadataRequest(["app-clicks"], True)
        .build(MetadataRequest_v5)
        .allow_auto_topic_creation
    )
