"""The PostgreSQL types loader refuses, from the catalog's description of a result."""

from __future__ import annotations

import pytest

from loader.errors import EncodingError
from loader.pgtypes import PgType, refuse

CATALOG = {
    t.oid: t
    for t in [
        PgType(790, "money", "b", "N", 0),
        PgType(791, "_money", "b", "A", 790),
        PgType(600, "point", "b", "G", 0),
        PgType(3904, "int4range", "r", "R", 0),
        PgType(2249, "record", "p", "P", 0),
        PgType(16417, "mood", "e", "E", 0),
        PgType(16416, "_mood", "b", "A", 16417),
        PgType(16420, "pair", "c", "C", 0),
        PgType(16419, "_pair", "b", "A", 16420),
        PgType(3614, "tsvector", "b", "U", 0),
        PgType(3643, "_tsvector", "b", "A", 3614),
    ]
}


@pytest.mark.parametrize(
    ("oid", "message"),
    [
        (790, "'price' is money, whose text depends on the locale ($1,234.50), which loader "
              "does not send; cast it to numeric (price::numeric) in the query"),
        (791, "'price' is money[]"),
        (600, "send its text (price::text)"),
        (3904, "lower(price)"),
        (2249, "to_jsonb(price)"),
        (16416, "'price' is mood[], an array of a type the driver reads as one text"),
        (16420, "'price' is pair, a row type"),
        (16419, "a JSON array of objects with to_jsonb(price)"),
    ],
)  # fmt: skip
def test_refused_types_name_the_column_and_the_cast(oid: int, message: str) -> None:
    """Each refused type fails naming the column, its type and the fix."""
    with pytest.raises(EncodingError) as caught:
        refuse(["id", "price"], {"id": 20, "price": oid}, CATALOG)
    assert message in str(caught.value)


@pytest.mark.parametrize("oid", [16417, 3614, 3643, 20])
def test_other_types_pass(oid: int) -> None:
    """Enums, built-in text types and their arrays, and unknown OIDs are sent."""
    refuse(["v"], {"v": oid}, CATALOG)


def test_a_column_name_that_needs_quotes_is_quoted_in_the_fix() -> None:
    """The suggested cast is valid SQL for a name with capitals or spaces."""
    with pytest.raises(EncodingError, match=r'"Unit Price"::numeric'):
        refuse(["Unit Price"], {"Unit Price": 790}, CATALOG)
