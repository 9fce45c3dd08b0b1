"""docs/ref is generated from the code: a change to the config or messages must regenerate it."""

from devstack import refdocs


def test_reference_docs_are_current() -> None:
    stale = refdocs.write(check=True)
    assert stale == [], f"docs/ref out of date: {stale}; run `./gtv refdocs`"


def test_reference_docs_cover_every_key() -> None:
    config_doc = refdocs.agent_config_md()
    for key in ("cameras.<name>.record.segment_seconds", "central.amqp_url", "data_dir"):
        assert f"`{key}`" in config_doc
    assert "`central.segments.dlq`" in refdocs.messages_md()
