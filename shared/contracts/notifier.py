"""The notifier's tenant routes (/admin/tenants/{tenant_id}/...): what the issuer forwards on a tenant's behalf
and the notifier validates again. The issuer's public /v1 routes document these same models."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared.errors import FieldError
from shared.validators import CLEAN_TEXT, JsonPattern

__all__ = ["ENDINGS", "KINDS", "DeliveryStatus", "HistoryFilters", "Kind", "RotateSecret", "SubscriptionCreate",
           "SubscriptionPatch", "Text"]

Kind = Literal["stuck", "recovered", "rejected", "orphan", "resolved", "closed", "reminder", "review_overdue",
               "review_denied", "form_awaiting", "form_rejected", "form_voided", "form_expiring", "red_missing"]
KINDS: tuple[Kind, ...] = ("stuck", "recovered", "rejected", "orphan", "resolved", "closed", "reminder",
                           "review_overdue", "review_denied", "form_awaiting", "form_rejected", "form_voided",
                           "form_expiring", "red_missing")
# The end of a problem: always delivered (a mute lifts), and no more reminders about it.
ENDINGS = frozenset({"recovered", "resolved", "closed", "rejected"})

DeliveryStatus = Literal["pending", "delivered", "exhausted", "cancelled"]

# Pragmatic address check (the SMTP server has the last word): one @, no spaces or angle brackets, a dot in
# the domain, nothing that could inject a header.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+")


def _email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("not an e-mail address such as finance@example.com")
    local, _, domain = value.partition("@")
    return f"{local}@{domain.lower()}"


Email = Annotated[str, AfterValidator(_email), JsonPattern(f"^\\s*{_EMAIL.pattern}\\s*$")]
Text = Annotated[str, CLEAN_TEXT]
# What the notifier's target policy (guard.py) parses; whether the host resolves, and to an address webhooks
# may go to, is for the policy to say (422 naming url).
Url = Annotated[str, StringConstraints(min_length=8, max_length=2000), JsonPattern(r"^\s*https?://[^\s/?#@]+([/?][^\s#]*)?\s*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _unique_kinds(kinds: list[str]) -> list[str]:
    if not kinds:
        raise ValueError("name at least one alert kind")
    return sorted(set(kinds), key=KINDS.index)


Kinds = Annotated[list[Kind], Field(max_length=len(KINDS), json_schema_extra={"minItems": 1}),
                  AfterValidator(_unique_kinds)]


class SubscriptionCreate(_Strict):
    """A webhook (`url`) or an e-mail (`emails`) subscription; `missing_fields` says what the channel lacks."""

    # What field_problems() checks, said in the schema too, so the document is as strict as the validator: a
    # webhook has a url and no emails, an e-mail subscription has emails and no url.
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {"channel": {"const": "webhook"}, "url": {"type": "string"}, "emails": {"type": "null"}},
         "required": ["url"]},
        {"properties": {"channel": {"const": "email"}, "emails": {"type": "array"}, "url": {"type": "null"}},
         "required": ["emails"]},
    ]})

    channel: Literal["webhook", "email"]
    url: Url | None = None
    emails: Annotated[list[Email], Field(min_length=1, max_length=20)] | None = None
    kinds: Kinds = Field(default_factory=lambda: list(KINDS))
    description: Annotated[Text, StringConstraints(max_length=200)] | None = None

    @field_validator("emails")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(v)) if v is not None else None

    def field_problems(self) -> list[FieldError]:
        if self.channel == "webhook":
            return ([FieldError("url", "required for a webhook subscription")] if self.url is None else []) + (
                [FieldError("emails", "only an e-mail subscription has addresses")] if self.emails is not None
                else [])
        return ([FieldError("emails", "required for an e-mail subscription")] if self.emails is None else []) + (
            [FieldError("url", "only a webhook subscription has a url")] if self.url is not None else [])


class SubscriptionPatch(_Strict):
    url: Url | None = None
    emails: Annotated[list[Email], Field(min_length=1, max_length=20)] | None = None
    kinds: Kinds | None = None
    description: Annotated[Text, StringConstraints(max_length=200)] | None = None
    active: bool | None = None


class RotateSecret(_Strict):
    overlap_seconds: int = Field(default=86_400, ge=0, le=7 * 86_400,
                                 description="how long the old secret keeps signing beside the new one")


class HistoryFilters(BaseModel):
    """The notification history's query: newest first, `next_cursor` of one page as `cursor` of the next."""

    model_config = ConfigDict(extra="forbid")
    invoice_id: uuid.UUID | None = None
    status: DeliveryStatus | None = None
    cursor: str | None = Field(default=None, max_length=200, description="next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=200)
