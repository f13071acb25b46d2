"""The checker can fail: doctored observations (an acknowledged invoice deleted from the store, an alert delivered
twice, a stuck invoice without its case, a changed total, an unexplained status) fail it with the invoice named."""

from __future__ import annotations

from fapiao.drill.checker import (
    Alert,
    Answer,
    Form,
    IssuerInvoice,
    Observation,
    RedLetterAnswer,
    Sample,
    StoredInvoice,
    check,
)

CONTENT = {"total": "113.00", "total_amount": "100.00", "total_tax": "13.00"}


def healthy(n: int = 3) -> Observation:
    answers = [Answer(f"N{i:04d}", float(i), CONTENT, 201, f"id-{i}", i + 0.1) for i in range(n)]
    stored = [StoredInvoice(f"N{i:04d}", {"total": "113.0", "total_amount": "100", "total_tax": "13.00"})
              for i in range(n)]
    issuer = [IssuerInvoice(f"id-{i}", f"N{i:04d}", "confirmed", None, None, None) for i in range(n)]
    samples = [Sample(1.0, {"submitted": n}, 1.0), Sample(5.0, {"confirmed": n}, 0.0)]
    return Observation(answers, stored, issuer, cases=[], alerts=[], samples=samples, faults_end=2.0, load_end=3.0)


def test_a_healthy_run_passes_with_its_figures() -> None:
    v = check(healthy())
    assert v.passed, v.violations
    assert (v.acknowledged, v.statuses, v.time_to_converge_s, v.worst_lag_s) == (3, {"confirmed": 3}, 3.0, 1.0)


def test_an_acknowledged_invoice_deleted_from_the_store_is_lost_and_named() -> None:
    obs = healthy()
    obs.stored = [s for s in obs.stored if s.number != "N0001"]
    v = check(obs)
    assert not v.passed
    assert len(v.lost) == 1 and v.lost[0].startswith("N0001 (invoice id-1)")


def test_a_voided_invoice_absent_at_the_store_is_not_lost() -> None:
    obs = healthy()
    obs.stored = [s for s in obs.stored if s.number != "N0001"]
    obs.issuer[1] = IssuerInvoice("id-1", "N0001", "voided", None, None, None)
    assert check(obs).passed


def test_an_alert_delivered_under_two_webhook_ids_is_a_duplicate_effect_naming_the_invoice() -> None:
    obs = healthy()
    obs.issuer[2] = IssuerInvoice("id-2", "N0002", "confirmed", None, None, "C-1")
    rec = Alert("msg_a", "invoice.recovered", "id-2", "C-1")
    obs.alerts = [rec, rec,
                  Alert("msg_b", "invoice.recovered", "id-2", "C-1")]
    v = check(obs)
    assert not v.passed
    assert len(v.duplicates) == 1 and v.duplicates[0].startswith("N0002 (invoice id-2): invoice.recovered")
    assert "msg_a, msg_b" in v.duplicates[0]


def test_the_same_webhook_id_retried_is_not_a_duplicate() -> None:
    obs = healthy()
    obs.alerts = [Alert("msg_a", "invoice.recovered", "id-2", "C-1")] * 3
    assert check(obs).passed


def test_a_changed_total_is_a_content_mismatch() -> None:
    obs = healthy()
    obs.stored[0] = StoredInvoice("N0000", {**CONTENT, "total": "114.00"})
    v = check(obs)
    assert v.mismatched == ["N0000: total acknowledged 113.00 stored 114.00"]


def test_one_number_stored_twice_or_issued_under_two_ids_is_a_duplicate() -> None:
    obs = healthy()
    obs.stored.append(StoredInvoice("N0000", CONTENT))
    obs.answers.append(Answer("N0001", 9.0, CONTENT, 201, "id-other", 9.1, client=1))
    v = check(obs)
    assert any(d.startswith("N0000: stored 2 times") for d in v.duplicates)
    assert any(d.startswith("N0001: issued under 2 ids") for d in v.duplicates)


def test_a_stuck_invoice_needs_exactly_one_case_and_one_alert() -> None:
    obs = healthy()
    obs.stuck_allowed = True
    obs.issuer[0] = IssuerInvoice("id-0", "N0000", "stuck", "not visible", "a case is open", "C-9")
    v = check(obs)
    assert v.stuck_unhandled == ["N0000 (invoice id-0): stuck with 0 case(s) and 0 stuck alert(s)"]
    obs.cases = [{"case_no": "C-9", "invoice_id": "id-0", "status": "open"}]
    obs.alerts = [Alert("msg_s", "invoice.stuck", "id-0", "C-9")]
    assert check(obs).passed
    obs.cases.append({"case_no": "C-10", "invoice_id": "id-0", "status": "open"})
    v = check(obs)
    assert any("N0000" in d and "2 open cases" in d for d in v.duplicates)


def test_unconfirmed_without_reason_and_next_action_is_unexplained() -> None:
    obs = healthy()
    obs.issuer[1] = IssuerInvoice("id-1", "N0001", "submitted", "sent to the store", None, None)
    v = check(obs)
    assert v.unexplained == ["N0001 (invoice id-1): submitted without a next action"]
    assert v.not_converged == ["N0001 (invoice id-1): submitted at the end of the wait"]


def test_unanswered_requests_are_not_acknowledged_and_never_lost() -> None:
    obs = healthy()
    obs.answers.append(Answer("N0099", 4.0, CONTENT, None, error="ReadTimeout"))
    v = check(obs)
    assert v.passed and v.acknowledged == 3 and v.unanswered == 1


def restored(missing: list[str]) -> Observation:
    """A run with a restore at 10 s: N0001 was acknowledged (id-1) after the backup, lost by the restore, reported
    as an orphan or not, and re-sent by the ERP at 12 s (id-1b)."""
    obs = healthy()
    obs.answers.append(Answer("N0001", 12.0, CONTENT, 201, "id-1b", 12.1))
    obs.issuer[1] = IssuerInvoice("id-1b", "N0001", "confirmed", None, None, None)
    obs.restored_at, obs.restore_missing = 10.0, missing
    return obs


def test_after_a_restore_an_invoice_lost_by_it_must_have_been_reported_as_an_orphan() -> None:
    obs = restored(["N0001"])
    obs.alerts = [Alert("msg_o", "invoice.orphan", None, None, "N0001")]
    v = check(obs)
    assert v.passed, v.violations  # the id acknowledged before the restore is gone with it: not a duplicate
    obs.alerts = [Alert("msg_o", "invoice.orphan", None, None, "N0002")]  # another number's orphan
    v = check(obs)
    assert v.unreported_after_restore == ["N0001: held by the authority, unknown to the restored issuer, "
                                          "no orphan alert"]
    assert "missing after the restore, never reported" in v.violations


def test_without_a_restore_two_ids_for_one_number_stay_a_duplicate_and_orphans_differ_by_number() -> None:
    obs = restored([])
    obs.restored_at = None
    assert any(d.startswith("N0001: issued under 2 ids") for d in check(obs).duplicates)
    obs = healthy()
    obs.alerts = [Alert("msg_a", "invoice.orphan", None, None, "X1"),
                  Alert("msg_b", "invoice.orphan", None, None, "X2")]
    assert check(obs).passed
    obs.alerts.append(Alert("msg_c", "invoice.orphan", None, None, "X2"))
    assert len(check(obs).duplicates) == 1


def test_an_acknowledged_invoice_the_issuer_forgot_is_not_converged_even_when_the_store_holds_it() -> None:
    obs = healthy()
    obs.issuer = [i for i in obs.issuer if i.number != "N0002"]
    v = check(obs)
    assert v.not_converged == ["N0002: acknowledged but unknown to the issuer (the store holds it)"] and not v.lost


def test_a_scenario_whose_step_failed_fails_and_the_report_names_the_step() -> None:
    from fapiao.drill.report import violations_text
    from fapiao.drill.runner import ScenarioResult
    from fapiao.drill.scenario import Load, Scenario

    scenario = Scenario("mine", "", Load(), ())
    ok = [{"at": 6.0, "label": "backup", "ok": True}]
    failed = ok + [{"at": 13.0, "label": "restore", "ok": False, "error": "RuntimeError: no backup to restore"}]
    args = dict(scenario=scenario, verdict=check(healthy()), started_at=0.0, duration_s=1.0, samples=[],
                windows=[], offered_rate=1.0)
    assert ScenarioResult(faults=ok, **args).as_dict()["passed"]  # type: ignore[arg-type]
    result = ScenarioResult(faults=failed, **args).as_dict()  # type: ignore[arg-type]
    assert not result["passed"]
    assert violations_text([result]) == "mine: step failed at 13.0s: restore: RuntimeError: no backup to restore"


def test_refusals_while_the_issuer_cannot_reach_its_database_acknowledge_nothing_and_lose_nothing() -> None:
    """db-cut cuts the issuer from PostgreSQL: it answers 503 and the client retries. An invoice only ever refused
    is not acknowledged (so neither lost nor unconverged); one refused and then created counts once, and must
    then be at the store like any other."""
    obs = healthy()
    obs.answers += [Answer("N0050", 4.0, CONTENT, 503, None, 4.1), Answer("N0050", 5.0, CONTENT, 503, None, 5.1),
                    Answer("N0051", 4.0, CONTENT, 503, None, 4.1), Answer("N0051", 6.0, CONTENT, 201, "id-51", 6.1),
                    Answer("N0052", 4.0, CONTENT, 429, None, 4.1)]
    obs.issuer.append(IssuerInvoice("id-51", "N0051", "confirmed", None, None, None))
    obs.stored.append(StoredInvoice("N0051", CONTENT))
    obs.samples[-1] = Sample(7.0, {"confirmed": 4}, 0.0)
    v = check(obs)
    assert v.passed, v.violations
    assert (v.acknowledged, v.refused, v.unanswered, v.requests) == (4, 4, 0, 8)
    assert v.as_dict()["refused"] == 4
    obs.stored.pop()  # the one acknowledged after its 503 must still reach the store
    v = check(obs)
    assert len(v.lost) == 1 and v.lost[0].startswith("N0051 (invoice id-51)") and v.refused == 4


# --- red letters ----------------------------------------------------------------------------------------------

def red_lettered() -> Observation:
    """N0000 reversed in full (its form confirmed, red invoice R0 confirmed and stored), N0001's form void; the
    first request of N0000 had no answer and was retried under its key."""
    obs = healthy()
    obs.issuer[0] = IssuerInvoice("id-0", "N0000", "red_lettered", "Cancelled in full", None, None)
    obs.issuer.append(IssuerInvoice("red-0", "R0", "confirmed", None, None, None))
    obs.stored.append(StoredInvoice("R0", {"total": "-113.00"}))
    obs.red_letters = [RedLetterAnswer("N0000", "id-0", 1.0, None), RedLetterAnswer("N0000", "id-0", 2.0, 202, "f-0"),
                       RedLetterAnswer("N0001", "id-1", 1.5, 409, None, "not_at_authority"),
                       RedLetterAnswer("N0001", "id-1", 2.5, 202, "f-1")]
    obs.forms = [Form("f-0", "N0000", "confirmed", "confirmed; red invoice R0", "red-0", "R0"),
                 Form("f-1", "N0001", "voided", "void: nobody confirmed it", None, None)]
    return obs


def test_red_letters_that_end_confirmed_with_their_red_invoice_or_void_pass() -> None:
    v = check(red_lettered())
    assert v.passed, v.violations
    assert v.forms == {"confirmed": 1, "voided": 1} and v.statuses == {"red_lettered": 1, "confirmed": 2}


def test_a_confirmed_form_whose_red_invoice_the_store_lost_is_lost_and_named() -> None:
    obs = red_lettered()
    obs.stored = [x for x in obs.stored if x.number != "R0"]
    v = check(obs)
    assert v.lost == ["N0000: red-letter form f-0 confirmed, its red invoice R0 absent at the store"]


def test_a_form_still_pending_or_a_red_invoice_unconfirmed_has_not_converged() -> None:
    obs = red_lettered()
    obs.forms[1] = Form("f-1", "N0001", "pending", "waits for the buyer", None, None)
    obs.issuer[-1] = IssuerInvoice("red-0", "R0", "submitted", "r", "n", None)
    v = check(obs)
    assert sorted(v.not_converged) == ["N0000: red invoice R0 of form f-0 submitted",
                                       "N0001: red-letter form f-1 pending at the end of the wait (waits for the "
                                       "buyer)"]


def test_one_request_made_into_two_forms_or_a_red_invoice_stored_twice_is_a_duplicate_effect() -> None:
    obs = red_lettered()
    obs.red_letters.append(RedLetterAnswer("N0000", "id-0", 3.0, 200, "f-9"))
    obs.forms.append(Form("f-9", "N0000", "confirmed", "r", "red-0", "R0"))
    obs.stored.append(StoredInvoice("R0", {"total": "-113.00"}))
    v = check(obs)
    assert any(d.startswith("N0000: one red-letter request acknowledged as 2 forms") for d in v.duplicates)
    assert "N0000: 2 confirmed red-letter forms" in v.duplicates
    assert any("red invoice R0 stored 2 times" in d for d in v.duplicates)
