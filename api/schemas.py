"""Pydantic building blocks shared by the routes: safe text, money, pagination.

Request bodies forbid unknown fields and use strict integers, so a typo or a float amount is a
422, never a silent default. ``Text`` refuses what PostgreSQL or Avro could not store (NUL,
lone surrogates), so bad input ends as a 422 instead of a 500 deep in a driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from api.envelopes import ApiError

# Printable text without NUL; the JSON schema says so, so generated clients and fuzzers agree.
_NO_NUL = r"^[^\x00]*$"


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL),
    AfterValidator(_storable),
]
Description = Annotated[
    str, StringConstraints(max_length=5000, pattern=_NO_NUL), AfterValidator(_storable)
]
Notes = Annotated[
    str, StringConstraints(max_length=2000, pattern=_NO_NUL), AfterValidator(_storable)
]
Reason = Annotated[
    str, StringConstraints(max_length=500, pattern=_NO_NUL), AfterValidator(_storable)
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Bounded well inside bigint and Avro long: no real price comes near, and sums cannot overflow.
MAX_AMOUNT_MINOR = 10**12
AmountMinor = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT_MINOR)]


class Body(BaseModel):
    """Base of every request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class Money(BaseModel):
    """An amount in integer minor units (cents) and its ISO 4217 currency."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"amount": 4500, "currency": "EUR"}]}
    )

    amount: AmountMinor = Field(description="integer minor units, e.g. cents", examples=[4500])
    currency: Currency = Field(examples=["EUR"])


@dataclass(frozen=True)
class Pagination:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


# How deep a listing may page (page x per_page). An OFFSET makes PostgreSQL build and throw
# away every row before the page, so a deep page costs as much as reading the whole table;
# past this, a narrower filter finds the rows for less.
MAX_PAGE_DEPTH = 10_000


def _pagination(
    page: Annotated[int, Query(ge=1, le=10_000, description="1-based page number")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="items per page")] = 20,
) -> Pagination:
    if page * per_page > MAX_PAGE_DEPTH:
        raise ApiError(
            422,
            "Invalid input",
            details=[
                {
                    "field": "query.page",
                    "message": f"page x per_page may be at most {MAX_PAGE_DEPTH}; "
                    "narrow the filter instead of paging deeper",
                    "type": "value_error",
                }
            ],
        )
    return Pagination(page=page, per_page=per_page)


Paging = Annotated[Pagination, Depends(_pagination)]
