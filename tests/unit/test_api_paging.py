"""The one paging helper of every List call: page sizes, the rows a page shows, its next token."""

from __future__ import annotations

import pytest

from campaignd.api.convert import PageTokens, Violations
from campaignd.v1 import contact_service_pb2 as cs

KEY = b"k" * 32


def test_a_page_reads_one_row_more_than_it_shows() -> None:
    """A page of 2 reads 3 rows, shows 2, and its token resumes after the second."""
    tokens, v = PageTokens(KEY), Violations()
    page = tokens.page(v, cs.ListListsRequest(page_size=2), "lists", 100, 1000)
    assert page.limit == 3
    shown, token = page.result(["a", "b", "c"], lambda last: {"a": last})
    assert list(shown) == ["a", "b"]
    following = tokens.page(v, cs.ListListsRequest(page_token=token), "lists", 100, 1000)
    assert following.position == {"a": "b"}
    assert not v.found


@pytest.mark.parametrize("rows", [["a", "b"], ["a"], []])
def test_the_last_page_has_no_token(rows: list[str]) -> None:
    """When no more than the page's size was read, the page shows them all and hands on no token."""
    page = PageTokens(KEY).page(Violations(), cs.ListListsRequest(page_size=2), "lists", 100, 1000)
    shown, token = page.result(rows, lambda last: {"a": last})
    assert (list(shown), token) == (rows, "")


@pytest.mark.parametrize(("asked", "size"), [(0, 100), (7, 7), (5000, 1000)])
def test_page_size_defaults_and_is_capped(asked: int, size: int) -> None:
    """An unset page_size takes the call's default; a larger one than the maximum is cut to it."""
    page = PageTokens(KEY).page(Violations(), cs.ListListsRequest(page_size=asked), "lists", 100, 1000)
    assert page.size == size


def test_bad_size_and_token_name_their_fields() -> None:
    """A negative page_size and a token made for other filters are both reported, by field."""
    tokens, v = PageTokens(KEY), Violations()
    page = tokens.page(v, cs.ListListsRequest(page_size=1), "lists", 100, 1000)
    _, token = page.result(["a", "b"], lambda last: {"a": last})
    tokens.page(v, cs.ListSegmentsRequest(page_size=-1, page_token=token), "segments", 100, 1000)
    assert [(f.field, f.description) for f in v.found] == [
        ("page_size", "must not be negative"),
        ("page_token", "was made for other filters"),
    ]
