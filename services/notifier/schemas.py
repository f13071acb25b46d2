"""What an alert event must carry to be delivered. What tenants send to manage their subscriptions is the
issuer's and the notifier's shared contract: shared/contracts/notifier.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.notifier import Kind, Text

__all__ = ["AlertData"]


class AlertData(BaseModel):
    """The payload of an invoice.alerts.v1 event (shared/events.py); checked before anything is stored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alert_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    kind: Kind
    tenant_id: uuid.UUID
    seller_tax_id: Annotated[str, StringConstraints(min_length=18, max_length=18)]
    invoice_id: uuid.UUID | None = None
    number: Annotated[str, StringConstraints(pattern=r"^[0-9]{20}$")]
    issue_date: str | None = Field(default=None, max_length=10)
    total: str | None = Field(default=None, max_length=24)
    buyer_name: Annotated[Text, StringConstraints(max_length=200)] | None = None
    buyer_tax_id: str | None = Field(default=None, max_length=18)
    receipt_no: str | None = Field(default=None, max_length=64)
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=2000)]
    next_action: Annotated[Text, StringConstraints(max_length=1000)] | None = None
    case_no: Annotated[str, StringConstraints(max_length=32)] | None = None
    at: datetime

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"tenant_id"})
