"""``feed.queries.Window`` against a brute-force answer, on sorted sets kept as Redis keeps
them (by score, then by member as text), many ids to a millisecond: whatever the cursor and
the ceiling, a settled window is exactly the newest ids in its bounds, and a missing set is
never taken for an empty one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from feed.queries import Cursor, Window
from feed.readmodel import ID_SHIFT, SENTINEL_SCORE, score_of

FIRST_MS = 1_000  # ids of these milliseconds all have ten digits, as ids of one millisecond do


def _bound(value, score: float) -> float:
    return {"-inf": float("-inf"), "+inf": float("inf")}.get(value, value) if value else score


class FakeNode:
    """ZRANGEBYSCORE ... LIMIT and EXISTS over one sorted set, as Redis answers them."""

    def __init__(self, ids: set[int] | None) -> None:
        self.entries = (
            None
            if ids is None
            else sorted(
                [(score_of(i), str(i)) for i in ids] + [(SENTINEL_SCORE, "0")],
                key=lambda entry: (entry[0], entry[1]),
            )
        )
        self.reads = 0

    def run(self, commands, client=None):
        self.reads += 1
        replies = []
        for command in commands:
            if command[0] == "EXISTS":
                replies.append(int(self.entries is not None))
                continue
            _, _, lo, hi, _, offset, count = command
            lo, hi = _bound(lo, lo), _bound(hi, hi)
            inside = [m for s, m in self.entries or () if lo <= s <= hi]
            replies.append([m.encode() for m in inside[offset : offset + count]])
        return replies


ids_strategy = st.sets(
    st.builds(
        lambda ms, seq: ((FIRST_MS + ms) << ID_SHIFT) | seq,
        st.integers(0, 6),
        st.integers(0, 40),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(
    ids=ids_strategy,
    want=st.integers(1, 25),
    data=st.data(),
)
def test_a_settled_window_is_the_newest_ids_in_its_bounds(ids, want, data):
    pick = st.one_of(st.none(), st.sampled_from(sorted(ids)) if ids else st.none())
    max_id, since_id = data.draw(pick), data.draw(pick)
    ceiling_id = data.draw(pick)
    ceiling = None if ceiling_id is None else score_of(ceiling_id)
    window = Window("k", Cursor(limit=want, max_id=max_id, since_id=since_id), want, ceiling)
    node = FakeNode(ids)

    got = window.settle(node, None, window.ids(node.run(window.commands())))

    expected = sorted(
        (
            i
            for i in ids
            if (max_id is None or i < max_id)
            and (since_id is None or i > since_id)
            and (ceiling is None or score_of(i) <= ceiling)
        ),
        reverse=True,
    )[:want]
    assert got == expected


@given(want=st.integers(1, 25), bounded=st.booleans())
def test_a_missing_set_is_missing_and_an_empty_window_is_not(want, bounded):
    since_id = ((FIRST_MS + 9) << ID_SHIFT) if bounded else None
    cursor = Cursor(limit=want, since_id=since_id)
    missing, empty = FakeNode(None), FakeNode({FIRST_MS << ID_SHIFT})
    window = Window("k", cursor, want)
    assert window.ids(missing.run(window.commands())) is None
    assert window.ids(empty.run(window.commands())) == ([] if bounded else [FIRST_MS << ID_SHIFT])


def test_the_next_page_is_settled_in_one_read():
    """A page's max id is the last post of the page before: it is in the window, left out,
    and the read still holds enough without a second one."""
    ids = {((FIRST_MS + ms) << ID_SHIFT) for ms in range(100)}
    newest_first = sorted(ids, reverse=True)
    node = FakeNode(ids)
    window = Window("k", Cursor(limit=20, max_id=newest_first[19]), 21)

    got = window.settle(node, None, window.ids(node.run(window.commands())))

    assert (got, node.reads) == (newest_first[20:41], 1)
