"""Feed: the shared per-job buffer every caught-up follower reads from."""

from __future__ import annotations

from reviewstream.hub import Batch, Feed
from reviewstream.wire import sse_token_event


def feed_with(*batches: Batch, max_tokens: int = 100) -> Feed:
    feed = Feed("ch", max_tokens)
    feed.resubscribed()
    for batch in batches:
        feed.push(batch)
    return feed


def test_caught_up_followers_share_one_batch_and_one_encoding() -> None:
    last = Batch(2, ["c"], [3.0])
    feed = feed_with(Batch(0, ["a", "b"], [1.0, 2.0]), last)
    assert feed.tokens_from(2, 10) is last
    first = sse_token_event(last)
    assert sse_token_event(feed.tokens_from(2, 10)) is first  # type: ignore[arg-type]
    assert b"id: 3" in first and b'"tokens":["c"]' in first


def test_slices_across_batches_respect_offset_and_limit() -> None:
    feed = feed_with(Batch(0, ["a", "b"], [1.0, 2.0]), Batch(2, ["c", "d"], [3.0, 4.0]))
    got = feed.tokens_from(1, 2)
    assert got is not None and (got.offset, got.tokens, got.ts) == (1, ["b", "c"], [2.0, 3.0])
    got = feed.tokens_from(4, 10)
    assert got is not None and got.tokens == []  # caught up: nothing yet


def test_follower_behind_the_buffer_is_told_to_read_the_list() -> None:
    feed = feed_with(*(Batch(i, [str(i)], [float(i)]) for i in range(10)), max_tokens=4)
    assert feed.tokens_from(5, 10) is None
    got = feed.tokens_from(6, 10)
    assert got is not None and got.tokens == ["6", "7", "8", "9"]


def test_a_gap_empties_the_buffer_and_epochs_invalidate_it() -> None:
    feed = feed_with(Batch(0, ["a"], [1.0]))
    feed.push(Batch(5, ["f"], [6.0]))  # offsets 1-4 were missed
    assert feed.tokens_from(0, 10) is None and feed.covers(5) and not feed.covers(0)
    epoch = feed.epoch
    feed.resubscribed()
    assert feed.epoch == epoch + 1 and not feed.covers(5)
