"""What the invoice use cases decide, as values: the door words them (services/issuer/api/answers.py).

A use case that cannot find the tenant's invoice raises NotFound instead (shared.errors): every use case that
looks one up answers it alike, and nothing is done.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from services.issuer.csv_import import RowError
from services.issuer.lifecycle import Status
from services.issuer.schemas import InvoiceRead, InvoiceView, RedLetterFormView
from shared.contracts.reconciler import CaseDetail
from shared.errors import FieldError

__all__ = ["BatchIssued", "CaseOpened", "CaseRefused", "CaseShown", "Created", "Existing", "FileRefused",
           "FormAsked", "FormDecided", "Imported",
           "ImportedInvoice", "Invalid",
           "IssueOutcome", "NotVoidable", "NumberTaken", "Tally", "TooLarge", "Unreadable", "Voided"]


@dataclass(frozen=True)
class Created:
    invoice: InvoiceView


@dataclass(frozen=True)
class Existing:
    """The same number with the same content: the same invoice; nothing was written."""

    invoice: InvoiceView
    detail: str


@dataclass(frozen=True)
class NumberTaken:
    """The number is used with other content: by a stored invoice (`existing_id`) or earlier in the request."""

    number: str
    detail: str
    existing_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Invalid:
    errors: tuple[FieldError, ...]


IssueOutcome = Created | Existing | NumberTaken | Invalid


@dataclass(frozen=True)
class Tally:
    created: int
    existing: int
    conflicts: int
    invalid: int

    @classmethod
    def of(cls, outcomes: Iterable[IssueOutcome]) -> Tally:
        kinds = [type(o) for o in outcomes]
        return cls(kinds.count(Created), kinds.count(Existing), kinds.count(NumberTaken), kinds.count(Invalid))


@dataclass(frozen=True)
class TooLarge:
    """More invoices (or rows) than one request may carry; nothing was written."""

    detail: str


@dataclass(frozen=True)
class BatchIssued:
    items: tuple[IssueOutcome, ...]  # in the order of the request

    @property
    def tally(self) -> Tally:
        return Tally.of(self.items)


@dataclass(frozen=True)
class Unreadable:
    """The file is not text this import reads (not UTF-8, NUL bytes); nothing was written."""

    detail: str


@dataclass(frozen=True)
class FileRefused:
    """The file cannot be read as the import's CSV (the error names the row and column); nothing was written."""

    error: FieldError
    detail: str


@dataclass(frozen=True)
class ImportedInvoice:
    number: str
    rows: tuple[int, ...]
    outcome: IssueOutcome


@dataclass(frozen=True)
class Imported:
    """A file taken row by row: every good invoice kept, every bad row named."""

    rows: int
    invoices: tuple[ImportedInvoice, ...]
    errors: tuple[RowError, ...]  # sorted by row and column
    rejected: int  # invoices refused, and rows that belong to no invoice

    @property
    def tally(self) -> Tally:
        return Tally.of(i.outcome for i in self.invoices)


@dataclass(frozen=True)
class Voided:
    invoice: InvoiceRead


@dataclass(frozen=True)
class NotVoidable:
    """Only an invoice the authority has not accepted (rejected or stuck) can be voided."""

    status: Status


@dataclass(frozen=True)
class CaseOpened:
    case: CaseDetail
    invoice: InvoiceView
    opened: bool  # by this request; False: the case was open already


@dataclass(frozen=True)
class CaseRefused:
    """A voided invoice: there is nothing left for the authority to show, so no case is opened."""

    status: Status


@dataclass(frozen=True)
class CaseShown:
    case: CaseDetail
    invoice: InvoiceView | None  # None: e.g. an invoice found at the authority but never issued here


@dataclass(frozen=True)
class FormAsked:
    """A red-letter form asked for: stored with its event, on its way to the tax authority."""

    form: RedLetterFormView


@dataclass(frozen=True)
class FormDecided:
    form: RedLetterFormView
    changed: bool  # False: the same decision was asked for before
