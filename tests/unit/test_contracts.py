"""The inter-service contracts (shared/contracts): one case number, and answers read strictly enough that a
reply which is not the contract is noticed."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from pydantic import BaseModel, ValidationError

from shared.contracts.cases import CaseNo, case_no_of, is_case_no
from shared.contracts.notifier import HistoryFilters, SubscriptionCreate
from shared.contracts.reconciler import CaseDetail, CaseOpen, LedgerEntry, LedgerIds, LedgerPage


class _HasCase(BaseModel):
    case_no: CaseNo


@pytest.mark.parametrize("value", ["CASE-20261202-000001", "CASE-20991231-999999"])
def test_a_case_number_is_taken(value: str) -> None:
    assert is_case_no(value)
    assert _HasCase(case_no=value).case_no == value


@pytest.mark.parametrize("value", [
    "CASE-20261202-000001\n",  # "^…$" with re.match let this one through
    " CASE-20261202-000001", "CASE-20261202-000001 ", "case-20261202-000001", "CASE-20261202-00001",
    "CASE-20261202-0000012", "CASE-2026120-000001", "CASE-20261202000001", "x-CASE-20261202-000001",
    "CASE-\u0662\u0660\u0662\u0666\u0661\u0662\u0660\u0662-000001",  # Arabic-Indic digits match "\d", not ours
    "CASE-\uff12\uff10\uff12\uff16\uff11\uff12\uff10\uff12-000001",  # full-width digits
    "", None, 20261202,
])
def test_anything_else_is_no_case_number(value: object) -> None:
    assert not is_case_no(value)
    with pytest.raises(ValidationError):
        _HasCase.model_validate({"case_no": value})


def test_the_reconciler_numbers_its_cases_in_the_one_format() -> None:
    assert case_no_of(date(2026, 12, 2), 1) == "CASE-20261202-000001"
    assert is_case_no(case_no_of(date(2026, 1, 31), 999_999))


def test_the_case_number_is_documented_with_its_pattern() -> None:
    schema = _HasCase.model_json_schema()["properties"]["case_no"]
    assert schema["pattern"] == "^CASE-[0-9]{8}-[0-9]{6}$" and schema["type"] == "string"


def _case(**over: object) -> dict[str, object]:
    return {"case_no": "CASE-20261202-000001", "status": "open", "opened_by": "tenant",
            "opened_at": "2026-12-02T10:00:00+00:00", "resolved_at": None, "resolution": None, "note": None,
            "invoice_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()), "seller_tax_id": "91440300708461136T",
            "number": "26120200000000000001", "invoice_state": "pending", "gap_kind": None, "receipt_no": None,
            "resyncs": 0, "next_check_at": None, "last_error": None,
            "history": [{"at": "2026-12-02T10:00:00+00:00", "kind": "opened", "message": "Opened", "detail": None}]
            } | over


def test_a_case_answer_round_trips_as_the_reconciler_sent_it() -> None:
    sent = _case()
    assert CaseDetail.model_validate(sent).model_dump(mode="json") == sent


@pytest.mark.parametrize(("field", "value"), [("case_no", "CASE-1"), ("status", "lost"), ("tenant_id", "nobody"),
                                              ("resyncs", "many")])
def test_a_case_answer_that_is_not_the_contract_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        CaseDetail.model_validate(_case(**{field: value}))
    assert err.value.errors()[0]["loc"] == (field,)


def test_the_ledger_answers_carry_what_the_reconciler_sends() -> None:
    iid = uuid.uuid4()
    entry = {"invoice_id": str(iid), "state": "stuck", "recon_seq": 3, "sync_seq": 2,
             "next_check_at": "2026-12-02T10:05:00+00:00", "last_resync_at": None, "case_no": "CASE-20261202-000001"}
    page = LedgerPage.model_validate({"items": [entry], "next_after": str(iid)})
    assert page.next_after == iid and page.items[0].model_dump(mode="json") == entry
    assert page.items[0].schedule == {"next_check_at": "2026-12-02T10:05:00+00:00", "resync_at": None}
    with pytest.raises(ValidationError):
        LedgerEntry.model_validate(entry | {"recon_seq": None})
    with pytest.raises(ValidationError):
        LedgerIds(invoice_ids=[uuid.uuid4() for _ in range(1001)])


def test_requests_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError) as err:
        CaseOpen.model_validate({"invoice_id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4()),
                                 "seller_tax_id": "91440300708461136T", "number": "1" * 20, "note": "a\x00b"})
    assert err.value.errors()[0]["loc"] == ("note",)
    with pytest.raises(ValidationError):
        HistoryFilters.model_validate({"status": "sent"})
    with pytest.raises(ValidationError):
        HistoryFilters.model_validate({"page": 2})
    with pytest.raises(ValidationError):
        SubscriptionCreate.model_validate({"channel": "email", "emails": ["a@example.com\nBcc: b@example.com"]})
