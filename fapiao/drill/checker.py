"""The checker: what the workload was told (every request and its answer) against what ended up at the store, in
the issuer, in the reconciler's cases and at the webhook receiver. Pure: no I/O, no clock, so a doctored
observation proves it can fail (tests/unit/test_drill_checker.py).

Definitions (docs/drills.md):
- acknowledged: an invoice number for which some request got 200/201 with an invoice id; a 5xx or 429 (the issuer
  refusing, e.g. 503 while its database is out of reach) acknowledges nothing, so an invoice only ever refused can
  be neither lost nor unconverged;
- lost: acknowledged, not voided, absent at the store;
- content mismatch: stored with a total, tax or amount other than acknowledged;
- duplicate effects: one number stored twice or issued under two ids; one alert transition delivered under two
  webhook-ids; two cases opened for one invoice's stuck spell;
- unexplained: not confirmed and without both a reason and a next action;
- stuck without exactly one case and one alert;
- converged / time to converge: from the end of the faults until every acknowledged invoice was confirmed
  (or stuck with its case), from the samples; worst lag: the oldest unconfirmed acknowledged invoice ever seen.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["Alert", "Answer", "Observation", "Sample", "StoredInvoice", "Verdict", "check"]

CONTENT_FIELDS = ("total", "total_amount", "total_tax")
TERMINAL_OK = {"confirmed", "voided", "red_lettered"}  # red_lettered: reversed in full by a confirmed form
FORM_FINAL = {"confirmed", "rejected", "voided"}


@dataclass(frozen=True)
class Answer:
    """One request of the workload and what it was told."""

    number: str
    sent_at: float                     # seconds since the drill started
    content: dict[str, str]            # the acknowledged content (CONTENT_FIELDS)
    status: int | None                 # HTTP status; None: no answer (timeout, connection refused)
    invoice_id: str | None = None
    answered_at: float | None = None
    error: str | None = None
    client: int = 0


@dataclass(frozen=True)
class StoredInvoice:
    number: str
    content: dict[str, Any]


@dataclass(frozen=True)
class IssuerInvoice:
    id: str
    number: str
    status: str
    reason: str | None
    next_action: str | None
    case_no: str | None


@dataclass(frozen=True)
class Alert:
    """One webhook request the receiver got (each retry of a delivery carries the same webhook-id)."""

    webhook_id: str
    type: str
    invoice_id: str | None
    case_no: str | None
    number: str | None = None          # an orphan has a number and no invoice id


@dataclass(frozen=True)
class RedLetterAnswer:
    """One red-letter request of the workload (POST /v1/invoices/{id}/red-letter) and what it was told."""

    number: str                        # the blue invoice's
    invoice_id: str
    sent_at: float
    status: int | None                 # None: no answer
    form_id: str | None = None
    code: str | None = None            # the problem's code, when refused


@dataclass(frozen=True)
class Form:
    """A red-letter form as the issuer shows it at the end (GET /v1/red-letter-forms/{id})."""

    id: str
    number: str                        # the blue invoice's
    status: str
    reason: str | None
    red_invoice_id: str | None
    red_invoice_number: str | None


@dataclass(frozen=True)
class Sample:
    at: float
    statuses: dict[str, int]           # acknowledged invoices by issuer status at that moment
    oldest_unconfirmed_s: float        # age of the oldest acknowledged, unconfirmed invoice


@dataclass
class Observation:
    answers: list[Answer]
    stored: list[StoredInvoice]        # the store's listing, one entry per listed row (a number twice = twice)
    issuer: list[IssuerInvoice]
    cases: list[dict[str, Any]]        # the reconciler's cases: {case_no, invoice_id, ...}
    alerts: list[Alert]
    samples: list[Sample] = field(default_factory=list)
    faults_end: float = 0.0
    load_end: float = 0.0
    stuck_allowed: bool = False
    # A restore step: when it ended, and the acknowledged invoices the authority held that the restored issuer
    # no longer knew; each must have been reported (an `invoice.orphan` alert) before the ERP re-sent it.
    restored_at: float | None = None
    restore_missing: list[str] = field(default_factory=list)
    red_letters: list[RedLetterAnswer] = field(default_factory=list)
    forms: list[Form] = field(default_factory=list)  # the tenant's forms at the end, as the issuer lists them


@dataclass
class Verdict:
    acknowledged: int = 0
    requests: int = 0
    unanswered: int = 0
    refused: int = 0                   # answers 5xx or 429: the workload retried them, none acknowledges anything
    lost: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    stuck_unhandled: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    unreported_after_restore: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    forms: dict[str, int] = field(default_factory=dict)  # acknowledged red-letter forms by status at the end
    time_to_converge_s: float | None = None
    worst_lag_s: float = 0.0

    @property
    def violations(self) -> dict[str, list[str]]:
        return {k: v for k, v in (("lost", self.lost), ("content mismatch", self.mismatched),
                                  ("duplicate effects", self.duplicates), ("unexplained", self.unexplained),
                                  ("stuck without one case and one alert", self.stuck_unhandled),
                                  ("not converged", self.not_converged),
                                  ("missing after the restore, never reported", self.unreported_after_restore))
                if v}

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "acknowledged": self.acknowledged, "requests": self.requests,
                "unanswered": self.unanswered, "refused": self.refused, "lost": self.lost,
                "content_mismatch": self.mismatched,
                "duplicate_effects": self.duplicates, "unexplained": self.unexplained,
                "stuck_unhandled": self.stuck_unhandled, "not_converged": self.not_converged,
                "unreported_after_restore": self.unreported_after_restore,
                "statuses": self.statuses, "forms": self.forms, "time_to_converge_s": self.time_to_converge_s,
                "worst_lag_s": round(self.worst_lag_s, 2)}


def _same(a: str | None, b: str | None) -> bool:
    """Amounts compare as numbers ("100.0" is "100.00")."""
    try:
        return a is not None and b is not None and Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


def _acknowledged(answers: list[Answer]) -> dict[str, Answer]:
    """number -> the first answer that acknowledged it."""
    acked: dict[str, Answer] = {}
    for a in sorted(answers, key=lambda a: a.answered_at or a.sent_at):
        if a.status in (200, 201) and a.invoice_id and a.number not in acked:
            acked[a.number] = a
    return acked


def check(obs: Observation) -> Verdict:
    """The verdict on one scenario run."""
    v = Verdict(requests=len(obs.answers), unanswered=sum(1 for a in obs.answers if a.status is None),
                refused=sum(1 for a in obs.answers if a.status is not None and (a.status >= 500 or a.status == 429)))
    acked = _acknowledged(obs.answers)
    v.acknowledged = len(acked)
    stored_by_number: dict[str, list[StoredInvoice]] = defaultdict(list)
    for s in obs.stored:
        stored_by_number[s.number].append(s)
    issuer_by_number: dict[str, list[IssuerInvoice]] = defaultdict(list)
    for row in obs.issuer:
        issuer_by_number[row.number].append(row)

    for number, answer in sorted(acked.items()):
        rows = issuer_by_number.get(number, [])
        ids = {r.id for r in rows}
        told = {a.invoice_id for a in obs.answers if a.number == number and a.status in (200, 201) and a.invoice_id}
        if obs.restored_at is not None:  # an id acknowledged before a restore is gone with it; the re-sent one counts
            since = {a.invoice_id for a in obs.answers if a.number == number and a.status in (200, 201)
                     and a.invoice_id and a.sent_at >= obs.restored_at}
            told = since or told
        if len(ids) > 1 or len(told) > 1:
            v.duplicates.append(f"{number}: issued under {len(ids | told)} ids ({', '.join(sorted(ids | told))})")
        inv = next((r for r in rows if r.id == answer.invoice_id), rows[0] if rows else None)
        voided = inv is not None and inv.status == "voided"
        at_store = stored_by_number.get(number, [])
        if not at_store and not voided:
            v.lost.append(f"{number} (invoice {answer.invoice_id}): acknowledged at {answer.answered_at or 0:.1f}s, "
                          f"absent at the store; issuer says {inv.status if inv else 'nothing'}")
        if len(at_store) > 1:
            v.duplicates.append(f"{number}: stored {len(at_store)} times")
        for s in at_store[:1]:
            diff = {f: (answer.content.get(f), s.content.get(f)) for f in CONTENT_FIELDS
                    if answer.content.get(f) is not None and not _same(s.content.get(f), answer.content.get(f))}
            if diff:
                v.mismatched.append(f"{number}: " + ", ".join(f"{f} acknowledged {a} stored {b}"
                                                              for f, (a, b) in diff.items()))
        if inv is None:  # (absent at the store too: already counted as lost)
            v.not_converged.append(f"{number}: acknowledged but unknown to the issuer"
                                   + (" (the store holds it)" if at_store else ""))
            continue
        v.statuses[inv.status] = v.statuses.get(inv.status, 0) + 1
        if inv.status not in TERMINAL_OK and not (inv.reason and inv.next_action):
            v.unexplained.append(f"{number} (invoice {inv.id}): {inv.status} without "
                                 + " and ".join(w for w, x in (("a reason", inv.reason),
                                                               ("a next action", inv.next_action)) if not x))
        if inv.status == "stuck":
            _check_stuck(v, obs, number, inv)
            if not obs.stuck_allowed:
                v.not_converged.append(f"{number} (invoice {inv.id}): stuck (case {inv.case_no})")
        elif inv.status not in TERMINAL_OK:
            v.not_converged.append(f"{number} (invoice {inv.id}): {inv.status} at the end of the wait")

    _check_red_letters(v, obs, stored_by_number, {r.id: r for r in obs.issuer})
    _check_alert_duplicates(v, obs)
    _check_case_duplicates(v, obs)
    orphaned = {a.number for a in obs.alerts if a.type == "invoice.orphan" and a.number}
    v.unreported_after_restore = [f"{n}: held by the authority, unknown to the restored issuer, no orphan alert"
                                  for n in sorted(set(obs.restore_missing) - orphaned)]
    v.worst_lag_s = max((s.oldest_unconfirmed_s for s in obs.samples), default=0.0)
    v.time_to_converge_s = _time_to_converge(obs, len(acked))
    return v


def _check_red_letters(v: Verdict, obs: Observation, stored: dict[str, list[StoredInvoice]],
                       issuer: dict[str, IssuerInvoice]) -> None:
    """Every acknowledged red-letter form ends confirmed, rejected or voided, explained; a confirmed one has its
    red invoice at the issuer (confirmed) and at the store, once. A request retried (same key) is one form."""
    acked: dict[str, set[str]] = defaultdict(set)  # blue number -> the form ids it was told
    for a in obs.red_letters:
        if a.status in (200, 202) and a.form_id:
            acked[a.number].add(a.form_id)
    forms = {f.id: f for f in obs.forms}
    for number, ids in sorted(acked.items()):
        if len(ids) > 1:
            v.duplicates.append(f"{number}: one red-letter request acknowledged as {len(ids)} forms "
                                f"({', '.join(sorted(ids))})")
        for form_id in sorted(ids):
            f = forms.get(form_id)
            if f is None:
                v.lost.append(f"{number}: red-letter form {form_id} acknowledged, unknown to the issuer")
                continue
            v.forms[f.status] = v.forms.get(f.status, 0) + 1
            if f.status not in FORM_FINAL:
                v.not_converged.append(f"{number}: red-letter form {form_id} {f.status} at the end of the wait"
                                       + (f" ({f.reason})" if f.reason else ""))
            if not f.reason:
                v.unexplained.append(f"{number}: red-letter form {form_id} {f.status} without a reason")
            if f.status != "confirmed":
                continue
            red = issuer.get(f.red_invoice_id or "")
            at_store = stored.get(f.red_invoice_number or "", [])
            if red is None or not at_store:
                where = "unknown to the issuer" if red is None else "absent at the store"
                v.lost.append(f"{number}: red-letter form {form_id} confirmed, its red invoice "
                              f"{f.red_invoice_number} {where}")
            elif red.status != "confirmed":
                v.not_converged.append(f"{number}: red invoice {red.number} of form {form_id} {red.status}")
            if len(at_store) > 1:
                v.duplicates.append(f"{number}: red invoice {f.red_invoice_number} stored {len(at_store)} times")
    red_per_blue = Counter(f.number for f in obs.forms if f.status == "confirmed")
    for number, n in sorted(red_per_blue.items()):
        if n > 1:  # the workload asks for all that is left, once: a second confirmed form is a second reversal
            v.duplicates.append(f"{number}: {n} confirmed red-letter forms")


def _check_stuck(v: Verdict, obs: Observation, number: str, inv: IssuerInvoice) -> None:
    cases = {c["case_no"] for c in obs.cases if c.get("invoice_id") == inv.id}
    alerts = {a.webhook_id for a in obs.alerts if a.invoice_id == inv.id and a.type == "invoice.stuck"}
    if len(cases) != 1 or len(alerts) != 1:
        v.stuck_unhandled.append(f"{number} (invoice {inv.id}): stuck with {len(cases)} case(s) and "
                                 f"{len(alerts)} stuck alert(s)")


def _check_alert_duplicates(v: Verdict, obs: Observation) -> None:
    """One transition (type, invoice, case) delivered under two webhook-ids is a duplicate effect."""
    ids_per_transition: dict[tuple[str, str | None, str | None], set[str]] = defaultdict(set)
    for a in obs.alerts:
        if a.type.startswith("webhook.") or a.type == "invoice.alerts.digest" or a.type == "case.reminder":
            continue
        # (an orphan names no invoice of ours: its number tells one from another)
        ids_per_transition[(a.type, a.invoice_id or a.number, a.case_no)].add(a.webhook_id)
    numbers = {inv.id: inv.number for inv in obs.issuer}
    for (kind, invoice_id, case_no), ids in sorted(ids_per_transition.items(), key=str):
        if len(ids) > 1:
            v.duplicates.append(f"{numbers.get(invoice_id or '', invoice_id)} (invoice {invoice_id}): {kind} "
                                f"(case {case_no}) delivered under {len(ids)} webhook-ids {', '.join(sorted(ids))}")


def _check_case_duplicates(v: Verdict, obs: Observation) -> None:
    """Two open cases for one invoice: one stuck spell, two cases."""
    open_cases = Counter(c.get("invoice_id") for c in obs.cases if c.get("status", "open") == "open")
    numbers = {inv.id: inv.number for inv in obs.issuer}
    for invoice_id, n in sorted(open_cases.items(), key=str):
        if invoice_id and n > 1:
            v.duplicates.append(f"{numbers.get(invoice_id, invoice_id)} (invoice {invoice_id}): {n} open cases")


def _time_to_converge(obs: Observation, acked: int) -> float | None:
    """Seconds from the end of the faults (or of the load, if later) to the first sample where every acknowledged
    invoice was confirmed, voided or (when allowed) stuck; None if that never happened."""
    start = max(obs.faults_end, 0.0)
    settled = TERMINAL_OK | ({"stuck"} if obs.stuck_allowed else set())
    for s in obs.samples:
        if s.at >= obs.load_end and acked and sum(n for k, n in s.statuses.items() if k in settled) >= acked:
            return round(max(0.0, s.at - start), 1)
    return None
