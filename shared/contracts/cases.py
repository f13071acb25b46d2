"""The reconciler's case number, one definition for every service that takes one in a path or a payload."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, WithJsonSchema

__all__ = ["CASE_NO", "CaseNo", "CaseStatus", "case_no_of", "is_case_no"]

# ASCII digits only ("\d" would take any Unicode digit); always fullmatch: "$" lets a trailing newline through.
CASE_NO = re.compile(r"CASE-[0-9]{8}-[0-9]{6}")

CaseStatus = Literal["open", "resolved", "closed"]


def is_case_no(value: object) -> bool:
    """Whether `value` is a case number, exactly (no surrounding spaces or newline)."""
    return isinstance(value, str) and CASE_NO.fullmatch(value) is not None


def case_no_of(day: date, n: int) -> str:
    """The `n`-th case opened on `day` (the reconciler's calendar)."""
    return f"CASE-{day:%Y%m%d}-{n:06d}"


def _case_no(value: str) -> str:
    if not is_case_no(value):
        raise ValueError("not a case number such as CASE-20261202-000001")
    return value


CaseNo = Annotated[str, AfterValidator(_case_no), WithJsonSchema(
    {"type": "string", "pattern": f"^{CASE_NO.pattern}$", "examples": ["CASE-20261202-000001"]})]
"""A case number in a model: CASE-YYYYMMDD-NNNNNN, matched whole."""
