"""`fapiao` — the operator CLI.

    fapiao tenants create --name N --tax-id USCC     register a seller; prints its API key once
    fapiao import FILE.csv --api-key KEY              import historical invoices, with a progress bar
    fapiao summary --month 2026-11                    发票汇总确认: a month here vs. at the tax authority
    fapiao summary --month 2026-11 --out F.xlsx       the month as a spreadsheet (csv, xlsx) or report (pdf, html)
    fapiao status                                     stack health, lag, gaps, stuck (exit 1 if a service is down)
    fapiao invoice show NUMBER|ID                     one invoice: status, reason, next action, timeline
    fapiao gaps | resync ID                           what is unconfirmed and why; resubmit one invoice now
    fapiao cases list | cases show CASE-...           the reconciler's cases and their history
    fapiao cases evidence CASE-... --out F.zip        a case's evidence pack (PDF + JSON) for the tax bureau
    fapiao faults show | faults set drop_rate=0.3     the simulated tax store's faults (drills)
    fapiao red-letter create ID --reason 02 [--line 0:-100.00]   a credit note (红冲); list, confirm, reject
    fapiao verify NUMBER --date D --total T           发票查验 at the tax authority

Every command takes --json for scripts. Exit status: 0 fine, 1 the answer is bad news (a service down,
rows rejected, a summary that differs), 2 the request could not be made or was refused.

Settings come from FAPIAO_* variables; when a local stack runs (`make up`), from its `.run/stack.env`.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import sys
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shared.backoff import backoff
from shared.settings import format_duration

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fapiao Sync operator CLI.")
tenants_app = typer.Typer(no_args_is_help=True, help="Seller enterprises and their API keys.")
app.add_typer(tenants_app, name="tenants")
from fapiao.drill.main import app as drill_app  # noqa: E402 - the drill commands live in their own package
from fapiao.stack import app as stack_app  # noqa: E402

app.add_typer(drill_app, name="drill")
app.add_typer(stack_app, name="stack", help="The local stack of `make up`: up, down, status, restart, logs.")
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def _load_stack_env() -> None:
    from fapiao.stack import state_dir

    path = state_dir() / "stack.env"
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.startswith("FAPIAO_") and key not in os.environ:
            os.environ[key] = value


@tenants_app.command("create")
def tenants_create(
    name: str = typer.Option(..., help="the enterprise's registered name"),
    tax_id: str = typer.Option(..., "--tax-id", help="its USCC (统一社会信用代码)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Register a seller enterprise and print its API key — shown this once, stored only as a hash."""
    _load_stack_env()
    from services.issuer.app import migrate
    from services.issuer.settings import IssuerSettings
    from services.issuer.tenants import TaxIdTaken, TenantCreated, TenantInvalid, create_tenant
    from shared.db import make_engine, session_factory, transaction

    try:
        settings = IssuerSettings()
    except Exception as exc:  # noqa: BLE001 - report configuration problems plainly
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def run() -> TenantCreated | TenantInvalid | TaxIdTaken:
        await migrate(settings)
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            async with transaction(session_factory(engine)) as session:
                return await create_tenant(session=session, name=name, tax_id=tax_id)
        finally:
            await engine.dispose()

    outcome = asyncio.run(run())
    if isinstance(outcome, TenantInvalid):
        err.print(f"[red]Validation failed:[/red] {'; '.join(f'{e.path}: {e.reason}' for e in outcome.errors)}")
        raise typer.Exit(1)
    if isinstance(outcome, TaxIdTaken):
        err.print(f"[red]Conflict:[/red] a tenant with tax id {outcome.tax_id} already exists")
        raise typer.Exit(1)
    tenant, key = outcome.tenant, outcome.api_key
    if as_json:
        typer.echo(json.dumps({"id": str(tenant.id), "name": tenant.name, "tax_id": tenant.tax_id, "api_key": key}))
        return
    typer.echo(f"Tenant {tenant.name} ({tenant.tax_id}) created, id {tenant.id}.")
    typer.echo(f"API key (shown once, keep it safe): {key}")


# --- sending safely: one Idempotency-Key per request, reused on every retry ------------------------------

RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_BASE = 0.5  # seconds; the n-th retry waits a random time up to min(RETRY_CAP, RETRY_BASE * 2**n)
RETRY_CAP = 30.0
RETRY_AFTER_CAP = 120.0  # a Retry-After longer than this is not waited for in full


class Unreachable(Exception):
    """No answer after every retry; the message is one line for the user."""


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), None when absent or unreadable."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds()) if when.tzinfo else None


def _transient(resp: httpx.Response) -> bool:
    if resp.status_code in RETRY_STATUSES:
        return True
    # The first attempt (whose answer was lost) still holds the key: it will answer soon.
    return resp.status_code == 409 and "still being processed" in resp.text


def _backoff(attempt: int, resp: httpx.Response | None) -> float:
    after = _retry_after(resp) if resp is not None else None
    return backoff(attempt, base=RETRY_BASE, cap=RETRY_CAP, retry_after=after, retry_after_cap=RETRY_AFTER_CAP)


def _send(client: httpx.Client, method: str, url: str, *, retries: int, idempotency_key: str | None = None,
          quiet: bool = False, **kwargs: Any) -> httpx.Response:
    """One request, retried on a lost connection, a timeout and 429/502/503/504 with bounded exponential
    backoff with jitter (Retry-After honoured). Every attempt carries the same Idempotency-Key, so a request
    that was carried out but whose answer was lost is answered from the first attempt, never done twice."""
    headers = dict(kwargs.pop("headers", None) or {})
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    attempt = 0
    while True:
        resp: httpx.Response | None = None
        try:
            resp = client.request(method, url, headers=headers, **kwargs)
            problem = None if not _transient(resp) else f"answered {resp.status_code}"
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}" + (f" ({exc})" if str(exc) else "")
        if problem is None or (resp is not None and attempt >= retries):
            assert resp is not None
            return resp  # retries used up: the last answer (say a 503 and why) is the caller's to show
        if attempt >= retries:
            raise Unreachable(f"{problem}" + (f"; gave up after {attempt + 1} attempts" if attempt else ""))
        delay = _backoff(attempt, resp)
        attempt += 1
        if not quiet:
            err.print(f"[yellow]{problem}; retrying in {delay:.1f} s (retry {attempt} of {retries})[/yellow]",
                      highlight=False)
        time.sleep(delay)


def _reasons(resp: httpx.Response) -> str:
    """A refusal in one line: the problem's errors (path: reason) or its detail."""
    try:
        answer = resp.json()
        reasons = "; ".join(
            f"{e['path']}: {e['reason']}" for e in answer.get("errors", [])) or str(answer.get("detail"))
    except (ValueError, AttributeError, KeyError, TypeError):
        reasons = resp.text[:300]
    return " ".join(reasons.split())[:500]


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:48]


# --- import ----------------------------------------------------------------------------------------------

CHUNK_ROWS = 5000  # rows per request at most (the issuer takes 10 x FAPIAO_BATCH_MAX)
CHUNK_BYTES = 2 * 1024 * 1024  # bytes per request at most (the issuer's default limit is 5 MiB)


class BadFile(Exception):
    """The file cannot be imported as it is; the message is one line naming the row."""


def _read_file(path: Path, max_invoices: int) -> tuple[bytes, list[str], list[list[tuple[int, list[str]]]]]:
    """The file's bytes, its header and its rows in chunks of whole invoices (each row with its number in the file).

    The whole file is checked first, the way the issuer checks it, so a file with a broken row sends nothing."""
    from services.issuer.csv_import import CsvFormatError, read_rows

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadFile(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"{path} is not UTF-8 (byte {exc.start}); save it as CSV UTF-8") from None
    if "\x00" in text:
        raise BadFile(f"{path} contains NUL bytes: is it really a CSV file?")
    try:
        rows = list(read_rows(text))
    except CsvFormatError as exc:
        raise BadFile(f"{path}: {exc.where or 'the file'} {exc}; nothing was imported") from None
    if not rows:
        raise BadFile(f"{path} is empty")
    header = rows[0][1]
    try:
        number_col = [h.strip() for h in header].index("number")
    except ValueError:
        raise BadFile(f"{path}: the header (row 1) has no 'number' column") from None
    by_number: dict[str, list[tuple[int, list[str]]]] = {}
    for n, cells in rows[1:]:
        number = cells[number_col].strip() if number_col < len(cells) else ""
        by_number.setdefault(number or f"(row {n})", []).append((n, cells))
    return raw, header, _split(list(by_number.values()), max_invoices)


def _split(invoices: list[list[tuple[int, list[str]]]], max_invoices: int) -> list[list[tuple[int, list[str]]]]:
    """Whole invoices (all rows of one number together) in chunks bounded by invoices, rows and bytes."""
    chunks: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    count = size = 0
    for rows in invoices:
        rows_size = sum(sum(len(c) + 3 for c in cells) * 3 for _, cells in rows)  # UTF-8, quoted: a safe bound
        if current and (count >= max_invoices or len(current) + len(rows) > CHUNK_ROWS
                        or size + rows_size > CHUNK_BYTES):
            chunks.append(current)
            current, count, size = [], 0, 0
        current.extend(rows)
        count += 1
        size += rows_size
    if current:
        chunks.append(current)
    return chunks


@app.command("import")
def import_csv(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY", help="the tenant's API key"),
    url: str = typer.Option(None, "--url", envvar="FAPIAO_ISSUER_URL", help="issuer base URL"),
    chunk: int = typer.Option(500, min=1, max=1000, help="invoices per request"),
    retries: int = typer.Option(6, min=0, max=20, help="retries of a request that got no answer or 429/502/503/504"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import historical invoices from CSV (one row per invoice line). Bad rows are reported, good ones kept.

    Each request carries an Idempotency-Key made from the file's content and the chunk's place in it and is
    retried with that key, so rerunning the same file after an interruption issues nothing twice."""
    _load_stack_env()
    url = url or os.environ.get("FAPIAO_ISSUER_URL") or "http://127.0.0.1:8000"
    api_key = _api_key(api_key)
    try:
        raw, header, chunks = _read_file(file, chunk)
    except BadFile as exc:
        err.print(f"[red]cannot import:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        totals, errors, replayed = _import_chunks(url, api_key, raw, header, chunks, retries=retries,
                                                  quiet=False, progress_off=as_json or not err.is_terminal)
    except _ImportStopped as exc:
        err.print(f"[red]import stopped:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted:[/red] rerun the same command to finish; what was imported is not issued twice",
                  highlight=False)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps({**totals, "errors": errors, "replayed_chunks": replayed}, ensure_ascii=False))
    else:
        console = Console()
        console.print(f"{totals['invoices']} invoices in {totals['rows']} rows: {totals['created']} created, "
                      f"{totals['existing']} already present, {totals['conflicts']} conflicts, "
                      f"{totals['rejected']} rejected.")
        if replayed:
            console.print(f"{replayed} of {len(chunks)} request(s) had been answered before (a rerun of this file): "
                          "their first answers are shown, and nothing was issued again.")
        if errors:
            table = Table("row", "column", "number", "reason", title="Rows with errors")
            for e in errors[:200]:
                table.add_row(str(e["row"]), e["column"], e.get("number") or "", e["reason"])
            console.print(table)
            if len(errors) > 200:
                console.print(f"… and {len(errors) - 200} more (use --json for all)")
    if totals["rejected"] or totals["conflicts"]:
        raise typer.Exit(1)


class _ImportStopped(Exception):
    pass


def _import_chunks(url: str, api_key: str, raw: bytes, header: list[str], chunks: list[list[tuple[int, list[str]]]],
                   *, retries: int, quiet: bool, progress_off: bool) -> tuple[dict[str, int], list[dict], int]:
    file_digest = hashlib.sha256(raw).hexdigest()
    totals = {"rows": 0, "invoices": 0, "created": 0, "existing": 0, "conflicts": 0, "rejected": 0}
    errors: list[dict[str, Any]] = []
    replayed = 0
    progress = Progress(TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TimeRemainingColumn(), console=err, disable=progress_off)
    with progress, httpx.Client(base_url=url, timeout=httpx.Timeout(120, connect=5),
                                headers={"Authorization": f"Bearer {api_key}"}) as client:
        task = progress.add_task("import", total=sum(len(c) for c in chunks))
        for index, rows in enumerate(chunks):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(header)
            writer.writerows(r for _, r in rows)
            body = buf.getvalue().encode()
            done = f"chunks 1-{index} of {len(chunks)} were imported; " if index else ""
            rerun = "rerun the same command: nothing is issued twice"
            # The same file gives the same keys: a rerun is answered from what the first run did.
            key = "fapiao-import-" + _key(file_digest, str(index), hashlib.sha256(body).hexdigest())
            try:
                resp = _send(client, "POST", "/v1/invoices/import", retries=retries, quiet=quiet, content=body,
                             headers={"Content-Type": "text/csv"}, idempotency_key=key)
            except Unreachable as exc:
                raise _ImportStopped(f"cannot reach the issuer: {exc}; {done}{rerun}") from None
            line_of = {i + 2: n for i, (n, _) in enumerate(rows)}  # request row -> file row
            if resp.status_code != 200:
                # The issuer numbers the request's rows; say the file's.
                def file_row(m: re.Match[str], lo: dict[int, int] = line_of) -> str:
                    return f"row {lo.get(int(m[1]), m[1])}"

                reasons = re.sub(r"\brow (\d+)\b", file_row, _reasons(resp))
                raise _ImportStopped(f"the issuer answered {resp.status_code} for rows {rows[0][0]}-{rows[-1][0]}: "
                                     f"{reasons}; {done}" + ("fix the file and run again" if resp.status_code < 500
                                                             else rerun))
            try:
                answer = resp.json()
                for e in answer["errors"]:
                    errors.append({**e, "row": line_of.get(e["row"], e["row"])})
                for k in totals:
                    totals[k] += answer[k]
            except (ValueError, KeyError, TypeError):
                raise _ImportStopped(f"the issuer's answer is not an import summary: {resp.text[:200]}") from None
            replayed += resp.headers.get("Idempotent-Replayed") == "true"
            progress.advance(task, len(rows))
    return totals, errors, replayed


def _api_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    from fapiao.stack import state_dir

    key_file = state_dir() / "demo-api-key"
    if key_file.exists():
        return key_file.read_text().strip()
    err.print("[red]no API key:[/red] pass --api-key or set FAPIAO_API_KEY")
    raise typer.Exit(2)


def _admin_token() -> str:
    """The token for operators' commands: yours (FAPIAO_OPERATOR_TOKEN, else the one `make up` made for you in
    .run/operator-token), so the audit log names you; else the admin token (FAPIAO_ADMIN_TOKEN, .run/admin-token)."""
    from fapiao.stack import state_dir

    token = os.environ.get("FAPIAO_OPERATOR_TOKEN", "").strip()
    if token:
        return token
    mine = state_dir() / "operator-token"
    if mine.exists() and (token := mine.read_text().strip()):
        return token
    token = os.environ.get("FAPIAO_ADMIN_TOKEN", "").strip()
    if token:
        return token
    token_file = state_dir() / "admin-token"
    if token_file.exists():
        return token_file.read_text().strip()
    err.print("[red]no admin token:[/red] set FAPIAO_OPERATOR_TOKEN or FAPIAO_ADMIN_TOKEN (or run against a "
              "`make up` stack)")
    raise typer.Exit(2)


def _call(method: str, url: str, path: str, *, token: str, params: dict[str, Any] | None = None,
          body: Any = None, ok: tuple[int, ...] = (200,), idempotency_key: str | None = None,
          retries: int = 0) -> Any:
    """One request to a service; exits 2 with the service's own words when the answer is not `ok`.

    With `retries`, a lost connection or a 429/502/503/504 is tried again (with the same Idempotency-Key)."""
    try:
        with httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client:
            resp = _send(client, method, f"{url.rstrip('/')}{path}", retries=retries, idempotency_key=idempotency_key,
                         params=params, json=body, headers={"Authorization": f"Bearer {token}"})
    except Unreachable as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if resp.status_code not in ok:
        err.print(f"[red]{resp.status_code}:[/red] {_reasons(resp)}", highlight=False)
        raise typer.Exit(2)
    return resp.json()


def _get_json(url: str, path: str, *, token: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a JSON object; exits 2 with the service's own words when it cannot be had."""
    return _call("GET", url, path, token=token, params=params)


def _url(service: str, default_port: int) -> str:
    return os.environ.get(f"FAPIAO_{service.upper()}_URL") or f"http://127.0.0.1:{default_port}"


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=None, default=str))


def _ago(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(seconds)


SUMMARY_FILES = ("csv", "xlsx", "pdf", "html", "json")


def _download(url: str, path: str, out: Path, *, token: str, params: dict[str, str] | None = None,
              missing: str | None = None) -> int:
    """GET a file to `out`, streamed, whole or not at all (a `.partial` beside it meanwhile); its size.
    Exits 1 with `missing` on a 404 when given, 2 with the service's own words on any other refusal."""
    partial = out.with_name(out.name + ".partial")
    written = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(300, connect=5)) as client, client.stream(
                "GET", f"{url.rstrip('/')}{path}", params=params, headers={"Authorization": f"Bearer {token}"}) as r:
            if r.status_code != 200:
                r.read()
                if r.status_code == 404 and missing:
                    err.print(f"[red]{missing}[/red]", highlight=False)
                    raise typer.Exit(1)
                err.print(f"[red]{r.status_code}:[/red] {_reasons(r)}", highlight=False)
                raise typer.Exit(2)
            with partial.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    written += len(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        err.print(f"[red]cannot reach {url}:[/red] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    partial.replace(out)
    return written


@app.command("summary")
def summary(
    month: str = typer.Option(..., "--month", help="the calendar month, YYYY-MM (2000-01 to 2099-12)"),
    tax_id: str = typer.Option(None, "--tax-id",
                               help="any seller, asked of the reconciler with the admin token (operators)"),
    api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY",
                                help="the tenant's API key (the default: your own invoices, via the issuer)"),
    url: str = typer.Option(None, "--url", help="issuer URL (or, with --tax-id and no --out, the reconciler's)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    out: Path = typer.Option(None, "--out", help="write the summary to this file instead, in --format (the "
                                                 "tenant's via the issuer; with --tax-id, that seller's via the "
                                                 "issuer's admin route)"),
    fmt: str = typer.Option(None, "--format", help=f"with --out: {' | '.join(SUMMARY_FILES)} (default: the file's "
                                                   "ending)"),
) -> None:
    """发票汇总确认: one seller's month, counts and sums (blue / red) here and at the tax authority, and every
    difference. Exit status 0 when both sides agree, 1 when they differ, 2 when it cannot be had. With --out,
    the month as a file for the accountants (GET /v1/summaries/{month}?format=..., or for an operator with
    --tax-id GET /admin/summaries/{month}?seller_tax_id=...&format=... on the issuer); exit 0 once written."""
    from shared.errors import ValidationFailed
    from shared.validators import parse_month

    month = month.strip()
    try:
        parse_month(month)  # the same check as the issuer's and the reconciler's, before asking either
    except ValidationFailed as exc:
        err.print("; ".join(f"[red]--{e.path}:[/red] {e.reason}" for e in exc.errors))
        raise typer.Exit(2) from None
    _load_stack_env()
    if out is not None or fmt is not None:
        if out is None:
            err.print("[red]--format goes with --out[/red]")
            raise typer.Exit(2)
        fmt = (fmt or out.suffix.lstrip(".")).lower()
        if fmt not in SUMMARY_FILES:
            err.print(f"[red]--format:[/red] one of {', '.join(SUMMARY_FILES)} (or a file ending in one)")
            raise typer.Exit(2)
        url = url or os.environ.get("FAPIAO_ISSUER_URL") or "http://127.0.0.1:8000"
        if tax_id:  # an operator's copy of any tenant's month: the issuer renders it, as for the tenant
            seller = tax_id.strip().upper()
            written = _download(url, f"/admin/summaries/{month}", out, token=_admin_token(),
                                params={"format": fmt, "seller_tax_id": seller},
                                missing=f"no tenant with tax id {seller}")
        else:
            written = _download(url, f"/v1/summaries/{month}", out, token=_api_key(api_key), params={"format": fmt})
        Console().print(f"Wrote {out} ({written:,} bytes, {fmt}).")
        return
    if tax_id:
        url = url or os.environ.get("FAPIAO_RECONCILER_URL") or "http://127.0.0.1:8002"
        body = _get_json(url, "/admin/summary", token=_admin_token(),
                         params={"seller_tax_id": tax_id.strip().upper(), "month": month})
    else:
        url = url or os.environ.get("FAPIAO_ISSUER_URL") or "http://127.0.0.1:8000"
        body = _get_json(url, f"/v1/summaries/{month}", token=_api_key(api_key))
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False))
    else:
        _print_summary(body)
    if not body.get("matches"):
        raise typer.Exit(1)


def _print_summary(s: dict[str, Any]) -> None:
    console = Console()
    console.print(f"Seller {s['seller_tax_id']}, {s['month']} ({s['period']['from']} – {s['period']['to']})")
    table = Table("", "invoices here", "total here", "at the authority", "total there", title="发票汇总 Summary")
    for colour, label in (("blue", "blue (蓝字)"), ("red", "red (红字)")):
        ours, theirs = s["ours"][colour], s["authority"][colour]
        table.add_row(label, str(ours["count"]), ours["total"], str(theirs["count"]), theirs["total"])
    console.print(table)
    skipped = s.get("not_expected_at_authority") or {}
    if any(skipped.values()):
        console.print("Not expected at the authority: " + ", ".join(f"{n} {k}" for k, n in skipped.items() if n))
    if s["matches"]:
        console.print("[green]Both sides agree.[/green]")
        return
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(s["difference_counts"].items()))
    console.print(f"[yellow]Differences:[/yellow] {counts}")
    diffs = Table("number", "kind", "here", "at the authority")
    for d in s["differences"][:200]:
        ours = d.get("ours") or {}
        theirs = d.get("authority") or {}
        diffs.add_row(d["number"], d["kind"].replace("_", " "),
                      f"{ours['state']} {ours['total']}" if ours else "—",
                      f"{theirs['total']} (receipt {theirs['receipt_no']})" if theirs else "—")
    console.print(diffs)
    if len(s["differences"]) > 200 or s.get("differences_truncated"):
        console.print("… more differences: use --json for the full list")


# --- operators: the pipeline at a glance, one invoice, gaps, cases, faults ------------------------------------

cases_app = typer.Typer(no_args_is_help=True, help="Cases (the reconciler's record of a missing invoice).")
faults_app = typer.Typer(no_args_is_help=True, help="The simulated tax store's faults (drills).")
invoice_app = typer.Typer(no_args_is_help=True, help="One invoice, any tenant.")
app.add_typer(cases_app, name="cases")
app.add_typer(faults_app, name="faults")
app.add_typer(invoice_app, name="invoice")

AS_JSON = typer.Option(False, "--json", help="machine-readable output")


@app.command("status")
def status(tenant: str = typer.Option(None, "--tenant", help="a tenant id: counts for it only"),
           as_json: bool = AS_JSON) -> None:
    """Stack health and how far behind things are: the invoices not yet at the authority by the stage they wait in,
    services, invoices by status, consumer lag, gaps, stuck, end-to-end latency. Exit status 1 when a service is
    not ready."""
    _load_stack_env()
    body = _call("GET", _url("issuer", 8000), "/ops/api/overview", token=_admin_token(),
                 params={"tenant_id": tenant, "stuck_limit": 0} if tenant else {"stuck_limit": 0})
    point = body.get("pipeline") or {}
    down = [svc["name"] for svc in body["services"] if not svc["ready"]]
    if as_json:
        _emit({"waiting": body.get("waiting"), "services": body["services"], "counts": body["counts"],
               "total": body["total"],
               "stuck": body["stuck_total"], "lag": point.get("lag"), "dlq": point.get("dlq"),
               "dlq_groups": point.get("dlq_groups"),
               "unconfirmed": point.get("unconfirmed"),
               "oldest_unconfirmed_seconds": point.get("oldest_unconfirmed_seconds"),
               "e2e_p50_seconds": point.get("e2e_p50"), "e2e_p95_seconds": point.get("e2e_p95"),
               "gaps": body.get("gaps"), "errors": body.get("errors"), "sampled_at": point.get("t")})
    else:
        console = Console()
        queue = body.get("waiting") or {}
        if queue:
            console.print(f"[bold]{queue['headline']}[/bold]")
            stages = Table("waiting in", "invoices", "oldest", "in stage", title="Not yet at the authority, by stage",
                           caption="oldest: since accepted; in stage: the longest in its present stage")
            for s in queue["stages"]:
                stages.add_row(s["label"], str(s["count"]), _ago(s["oldest_seconds"]) if s["count"] else "–",
                               _ago(s.get("in_stage_seconds")) if s["count"] else "–")
            console.print(stages)
        services = Table("service", "url", "ready", title="Services")
        for svc in body["services"]:
            services.add_row(svc["name"], svc["url"], "[green]yes[/green]" if svc["ready"] else "[red]NO[/red]")
        console.print(services)
        counts = Table("status", "invoices", title="Invoices" + (f" of tenant {tenant}" if tenant else ""))
        for name, n in sorted(body["counts"].items()):
            counts.add_row(name, str(n))
        counts.add_row("[bold]total[/bold]", str(body["total"]))
        console.print(counts)
        lag = point.get("lag") or {}
        console.print("Consumer lag (records): " + (", ".join(f"{k} {v}" for k, v in lag.items()) or "unknown"))
        console.print(f"Unconfirmed: {point.get('unconfirmed', '–')}, stuck: {body['stuck_total']}, oldest "
                      f"unconfirmed: {_ago(point.get('oldest_unconfirmed_seconds'))}; end to end p50 "
                      f"{_ago(point.get('e2e_p50'))}, p95 {_ago(point.get('e2e_p95'))} (last 5 min)")
        dlq = {k: v for k, v in (point.get("dlq") or {}).items() if v}
        groups = point.get("dlq_groups") or {}
        if dlq:  # records, each once however many consumer groups set it aside; then each group's share
            console.print("[yellow]Dead letters (records):[/yellow] " + ", ".join(
                f"{k} {v}" + (" (" + ", ".join(f"{g} {n}" for g, n in groups[k].items()) + ")" if groups.get(k) else "")
                for k, v in dlq.items()))
        for where, problem in (body.get("errors") or {}).items():
            if problem:
                console.print(f"[red]{where} cannot be read:[/red] {problem}")
        if down:
            console.print(f"[red]Not ready: {', '.join(down)}[/red]")
    if down:
        raise typer.Exit(1)


def _invoice_id(issuer: str, token: str, ref: str, tax_id: str | None) -> str:
    """An invoice id, or a 20-digit number looked up (the seller picked by tax id when several used it)."""
    if not ref.isdigit():
        return ref
    found = _call("GET", issuer, "/admin/invoices", token=token,
                  params={"number": ref, **({"seller_tax_id": tax_id} if tax_id else {})})["items"]
    if not found:
        err.print(f"[red]no invoice numbered {ref}[/red]")
        raise typer.Exit(1)
    if len(found) > 1:
        err.print(f"[yellow]{len(found)} sellers used number {ref}; pass --tax-id:[/yellow] "
                  + ", ".join(f"{f['seller_tax_id']} ({f['tenant']})" for f in found))
        raise typer.Exit(2)
    return str(found[0]["id"])


@invoice_app.command("pdf")
def invoice_pdf(ref: str = typer.Argument(..., help="the invoice id, or its 20-digit number"),
                out: Path = typer.Option(..., "--out", help="the PDF file to write"),
                tax_id: str = typer.Option(None, "--tax-id", help="the seller, when several used this number")) -> None:
    """The invoice's printable page (版式文件, with its QR code), any tenant's, to a file."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    invoice_id = _invoice_id(issuer, token, ref, tax_id)
    written = _download(issuer, f"/admin/invoices/{invoice_id}/pdf", out, token=token, missing=f"no invoice {ref}")
    Console().print(f"Wrote {out} ({written:,} bytes).")


@invoice_app.command("show")
def invoice_show(ref: str = typer.Argument(..., help="the invoice id, or its 20-digit number"),
                 tax_id: str = typer.Option(None, "--tax-id", help="the seller, when several used this number"),
                 as_json: bool = AS_JSON) -> None:
    """Status, reason, next action, case and timeline of one invoice."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    invoice_id = _invoice_id(issuer, token, ref, tax_id)
    inv = _call("GET", issuer, f"/admin/invoices/{invoice_id}", token=token, ok=(200, 404))
    if "id" not in inv:  # 404: an answer, not a failure (like an unknown number)
        err.print(f"[red]no invoice {ref}[/red]")
        raise typer.Exit(1)
    if as_json:
        _emit(inv)
        return
    console = Console()
    colour = {"confirmed": "green", "stuck": "red", "rejected": "yellow", "retrying": "yellow"}.get(inv["status"])
    shown = f"[{colour}]{inv['status']}[/{colour}]" if colour else inv["status"]
    console.print(f"Invoice {inv['number']} ({inv['id']}) of {inv['tenant']['name']} ({inv['seller_tax_id']}): {shown}")
    console.print(f"  total {inv['total']} {inv['currency']}, issued {inv['issue_date']}, buyer {inv['buyer_name']}")
    console.print(f"  reason:      {inv['reason']}")
    if inv.get("next_action"):
        console.print(f"  next action: {inv['next_action']}" + (f" (at {inv['next_action_at']})"
                                                                  if inv.get("next_action_at") else ""))
    for label, key in (("receipt", "receipt_no"), ("case", "case_no")):
        if inv.get(key):
            console.print(f"  {label + ':':<12} {inv[key]}")
    timeline = Table("at", "what", "", title="Timeline")
    for entry in inv["timeline"]:
        timeline.add_row(entry["at"][:19].replace("T", " "), entry["kind"], entry["message"])
    console.print(timeline)


@app.command("gaps")
def gaps(limit: int = typer.Option(20, min=1, max=1000, help="how many of the oldest to list"),
         as_json: bool = AS_JSON) -> None:
    """Unconfirmed invoices by kind and age, and the oldest of them with what happens next."""
    _load_stack_env()
    reconciler, token = _url("reconciler", 8002), _admin_token()
    counts = _call("GET", reconciler, "/admin/status", token=token)
    oldest = _call("GET", reconciler, "/admin/gaps", token=token, params={"limit": limit})["items"]
    if as_json:
        _emit({"gaps": counts["gaps"], "unconfirmed": counts["unconfirmed"], "stuck": counts["stuck"],
               "oldest_unconfirmed_seconds": counts["oldest_unconfirmed_seconds"], "oldest": oldest})
        return
    console = Console()
    ages = ["lt_1m", "1m_10m", "10m_1h", "1h_1d", "gt_1d"]
    by_kind: dict[str, dict[str, int]] = {}
    for g in counts["gaps"]:
        by_kind.setdefault(g["kind"], {})[g["age"]] = g["count"]
    table = Table("kind", "< 1 min", "1–10 min", "10 min–1 h", "1 h–1 d", "> 1 d", title="Gaps by age")
    for kind, row in sorted(by_kind.items()):
        table.add_row(kind, *(str(row.get(a, "")) for a in ages))
    console.print(table if by_kind else "No gaps: everything issued is confirmed.")
    if oldest:
        listing = Table("invoice", "number", "state", "since", "resyncs", "case", "next check", title="Oldest")
        for g in oldest:
            listing.add_row(g["invoice_id"], g["number"], g["state"] + (f" ({g['gap_kind']})" if g["gap_kind"] else ""),
                            (g["since"] or "")[:19], str(g["resyncs"]), g["case_no"] or "",
                            (g["next_check_at"] or "")[:19])
        console.print(listing)


@app.command("resync")
def resync(invoice_id: str = typer.Argument(..., help="the invoice id"), as_json: bool = AS_JSON) -> None:
    """Have the sync service resubmit an invoice now (it reads back first), then check it again."""
    _load_stack_env()
    # One key for this request and its retries: a resync whose answer was lost is not requested twice.
    out = _call("POST", _url("reconciler", 8002), f"/admin/invoices/{invoice_id}/resync", token=_admin_token(),
                ok=(202,), idempotency_key=f"fapiao-resync-{uuid.uuid4()}", retries=4)
    if as_json:
        _emit(out)
    else:
        Console().print(f"Resync of {out['invoice_id']} requested ({out['state']}); next check at "
                        f"{out['next_check_at'][:19]}.")


@cases_app.command("list")
def cases_list(status_: str = typer.Option(None, "--status", help="open | resolved | closed"),
               tenant: str = typer.Option(None, "--tenant", help="a tenant id"),
               limit: int = typer.Option(50, min=1, max=1000), as_json: bool = AS_JSON) -> None:
    """Cases, newest first."""
    _load_stack_env()
    items = _call("GET", _url("reconciler", 8002), "/admin/cases", token=_admin_token(),
                  params={k: v for k, v in {"status": status_, "tenant_id": tenant, "limit": limit}.items()
                          if v is not None})["items"]
    if as_json:
        _emit(items)
        return
    table = Table("case", "status", "opened by", "opened", "number", "invoice state", "resyncs", title="Cases")
    for c in items:
        table.add_row(c["case_no"], c["status"], c["opened_by"], (c["opened_at"] or "")[:19], c["number"],
                      c["invoice_state"], str(c["resyncs"]))
    Console().print(table if items else "No cases.")


@cases_app.command("show")
def cases_show(case_no: str = typer.Argument(...), as_json: bool = AS_JSON) -> None:
    """One case: status, the invoice as the reconciler sees it, and the history of checks, resyncs, alerts."""
    _load_stack_env()
    case = _call("GET", _url("reconciler", 8002), f"/admin/cases/{case_no}", token=_admin_token())
    if as_json:
        _emit(case)
        return
    console = Console()
    console.print(f"Case {case['case_no']}: {case['status']} (opened by {case['opened_by']} at "
                  f"{case['opened_at'][:19]}) for invoice {case['number']} ({case['invoice_id']}), now "
                  f"{case['invoice_state']}" + (f", receipt {case['receipt_no']}" if case.get("receipt_no") else ""))
    if case.get("resolution"):
        console.print(f"Resolution: {case['resolution']}")
    history = Table("at", "what", "", title="History")
    for h in case.get("history", []):
        history.add_row(h["at"][:19].replace("T", " "), h["kind"], h["message"])
    console.print(history)


@cases_app.command("evidence")
def cases_evidence(case_no: str = typer.Argument(..., help="the case number, CASE-YYYYMMDD-NNNNNN"),
                   out: Path = typer.Option(None, "--out", help="the ZIP to write (default: evidence-CASE.zip)"),
                   api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY",
                                               help="as the tenant (GET /v1/cases/{case_no}/evidence); without it, "
                                                    "any tenant's case with the admin token")) -> None:
    """保留证据: a case's evidence pack (a PDF of the case, the invoice and every step with the authority's answers,
    the same as JSON, and the invoice's page) as a ZIP, from the issuer."""
    _load_stack_env()
    issuer = _url("issuer", 8000)
    out = out or Path(f"evidence-{case_no}.zip")
    path, token = ((f"/v1/cases/{case_no}/evidence", api_key) if api_key
                   else (f"/admin/cases/{case_no}/evidence", _admin_token()))
    written = _download(issuer, path, out, token=token, missing=f"no case {case_no}")
    Console().print(f"Wrote {out} ({written:,} bytes).")


def _faults_table(faults: dict[str, Any]) -> Table:
    table = Table("fault", "value", title="Tax store faults")
    for key, value in faults.items():
        table.add_row(key, str(value))
    return table


@faults_app.command("show")
def faults_show(as_json: bool = AS_JSON) -> None:
    """The tax store's fault settings now."""
    _load_stack_env()
    faults = _call("GET", _url("taxstore", 8100), "/admin/faults", token=_admin_token())
    if as_json:
        _emit(faults)
    else:
        Console().print(_faults_table(faults))


def _fault_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "on", "yes"):
        return True
    if lowered in ("false", "off", "no"):
        return False
    if lowered in ("null", "none"):
        return None
    try:
        return int(lowered)
    except ValueError:
        pass
    try:
        return float(lowered)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number, true/false or null") from None


@faults_app.command("set")
def faults_set(assignments: list[str] = typer.Argument(..., help="key=value, e.g. drop_rate=0.3 outage=true"),
               as_json: bool = AS_JSON) -> None:
    """Change some of the tax store's faults; the others keep their values."""
    _load_stack_env()
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: write key=value, e.g. drop_rate=0.3")
        changes[key.strip()] = _fault_value(value)
    faults = _call("PUT", _url("taxstore", 8100), "/admin/faults", token=_admin_token(), body=changes,
                   retries=4)  # a PUT of the same values: safe to repeat
    if as_json:
        _emit(faults)
    else:
        Console().print(_faults_table(faults))


def main() -> None:
    try:
        app(prog_name="fapiao")
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as exc:  # a command line answers in one line, never with a traceback (FAPIAO_DEBUG: it does)
        if os.environ.get("FAPIAO_DEBUG"):
            raise
        err.print(f"[red]fapiao failed:[/red] {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                  "(FAPIAO_DEBUG=1 shows the traceback)", highlight=False)
        sys.exit(2)


# --- exports --------------------------------------------------------------------------------------------------

@app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="the file to write (its name's ending need not match --format)"),
    fmt: str = typer.Option("csv", "--format", help="csv (UTF-8 with a BOM) or xlsx"),
    status: str | None = typer.Option(None, help="only invoices of this status"),
    issued_from: str | None = typer.Option(None, "--issued-from", help="YYYY-MM-DD"),
    issued_to: str | None = typer.Option(None, "--issued-to", help="YYYY-MM-DD"),
    buyer_tax_id: str | None = typer.Option(None, "--buyer-tax-id"),
    min_total: str | None = typer.Option(None, "--min-total"),
    max_total: str | None = typer.Option(None, "--max-total"),
    api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY", help="the tenant's API key"),
    url: str = typer.Option(None, "--url", envvar="FAPIAO_ISSUER_URL", help="issuer base URL"),
) -> None:
    """The tenant's invoices (GET /v1/invoices/export, the list's filters) to a CSV or XLSX file, streamed."""
    _load_stack_env()
    url = url or os.environ.get("FAPIAO_ISSUER_URL") or "http://127.0.0.1:8000"
    key = _api_key(api_key)
    params = {k: v for k, v in {"format": fmt, "status": status, "issued_from": issued_from, "issued_to": issued_to,
                                "buyer_tax_id": buyer_tax_id, "min_total": min_total, "max_total": max_total}.items()
              if v is not None}
    written = _download(url, "/v1/invoices/export", out, token=key, params=params)
    Console().print(f"Wrote {out} ({written:,} bytes, {fmt}).")


# --- a tenant's API keys ----------------------------------------------------------------------------------------

keys_app = typer.Typer(no_args_is_help=True, help="A tenant's API keys: several at once, rotated with an overlap, "
                                                  "revoked within a second (admin API of the issuer).")
app.add_typer(keys_app, name="keys")
TENANT = typer.Argument(..., help="the tenant: its id or its tax id (USCC)")


def _tenant_id(issuer: str, token: str, tenant: str) -> str:
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        found = _call("GET", issuer, "/admin/tenants", token=token, params={"tax_id": tenant})["items"]
        if not found:
            err.print(f"[red]no tenant with tax id {tenant}[/red]", highlight=False)
            raise typer.Exit(1) from None
        return str(found[0]["id"])


def _seconds(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    from shared.settings import parse_duration

    try:
        return int(float(parse_duration(text)))
    except (TypeError, ValueError):
        err.print(f"[red]{what}:[/red] not a duration such as 90d, 24h, 30m or 3600", highlight=False)
        raise typer.Exit(2) from None


def _keys_table(items: list[dict[str, Any]]) -> Table:
    table = Table("id", "label", "key starts", "state", "created", "expires", "last used", title="API keys")
    for k in items:
        table.add_row(k["id"], k["label"], k["prefix"] + "…", k["state"], (k["created_at"] or "")[:16],
                      (k["expires_at"] or "–")[:16], (k["last_used_at"] or "never")[:16])
    return table


def _show_new_key(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit(answer)
        return
    console = Console()
    console.print(f"New key {answer['id']} ({answer['label']}), shown this once, keep it safe:")
    console.print(answer["key"], highlight=False, soft_wrap=True)
    if answer.get("expires_at"):
        console.print(f"It expires at {answer['expires_at']}.")
    if old := answer.get("replaces"):
        console.print(f"The key it replaces ({old['id']}) works until {old['expires_at']}.")


@keys_app.command("list")
def keys_list(tenant: str = TENANT, as_json: bool = AS_JSON) -> None:
    """The tenant's keys: label, first characters, state, created, expires, last used. Never a key itself."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    items = _call("GET", issuer, f"/admin/tenants/{_tenant_id(issuer, token, tenant)}/keys", token=token)["items"]
    if as_json:
        _emit({"items": items})
    else:
        Console().print(_keys_table(items))


@keys_app.command("create")
def keys_create(tenant: str = TENANT,
                label: str = typer.Option("default", help="a name to tell the key by, e.g. erp-production"),
                expires_in: str | None = typer.Option(None, "--expires-in", help="e.g. 90d; none: until revoked"),
                as_json: bool = AS_JSON) -> None:
    """Another key for the tenant (the others keep working); printed this once."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    body: dict[str, Any] = {"label": label}
    if (seconds := _seconds(expires_in, "--expires-in")) is not None:
        body["expires_in_seconds"] = seconds
    answer = _call("POST", issuer, f"/admin/tenants/{_tenant_id(issuer, token, tenant)}/keys", token=token,
                   body=body, ok=(201,))
    _show_new_key(answer, as_json)


@keys_app.command("revoke")
def keys_revoke(tenant: str = TENANT, key_id: str = typer.Argument(..., help="the key's id (fapiao keys list)"),
                as_json: bool = AS_JSON) -> None:
    """The key stops working within a second, on every issuer replica."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    answer = _call("POST", issuer, f"/admin/tenants/{_tenant_id(issuer, token, tenant)}/keys/{key_id}/revoke",
                   token=token)
    if as_json:
        _emit(answer)
    else:
        Console().print(f"Key {answer['id']} ({answer['label']}) is {answer['state']} since {answer['revoked_at']}.")


@keys_app.command("rotate")
def keys_rotate(tenant: str = TENANT, key_id: str = typer.Argument(..., help="the key's id (fapiao keys list)"),
                overlap: str = typer.Option("1d", help="how long the old key keeps working, e.g. 1d, 2h, 0"),
                as_json: bool = AS_JSON) -> None:
    """A new key under the same label; the old one works on for --overlap, then expires."""
    _load_stack_env()
    issuer, token = _url("issuer", 8000), _admin_token()
    answer = _call("POST", issuer, f"/admin/tenants/{_tenant_id(issuer, token, tenant)}/keys/{key_id}/rotate",
                   token=token, body={"overlap_seconds": _seconds(overlap, "--overlap")}, ok=(201,))
    _show_new_key(answer, as_json)


# --- operators and the audit log -------------------------------------------------------------------------------

operators_app = typer.Typer(no_args_is_help=True, help="Named operators (FAPIAO_OPERATOR_TOKENS).")
app.add_typer(operators_app, name="operators")
SERVICES = {"issuer": 8000, "sync": 8001, "reconciler": 8002, "notifier": 8003, "taxstore": 8100}


def _operators_file(given: Path | None) -> Path:
    """The operators file to edit: --file, else FAPIAO_OPERATOR_TOKENS_FILE (the `make up` stack's, .run/operators)."""
    _load_stack_env()
    if given is not None:
        return given
    if os.environ.get("FAPIAO_OPERATOR_TOKENS_FILE"):
        return Path(os.environ["FAPIAO_OPERATOR_TOKENS_FILE"])
    err.print("[red]no operators file:[/red] pass --file or set FAPIAO_OPERATOR_TOKENS_FILE (a `make up` stack "
              "has .run/operators); or use `fapiao operators token NAME` and FAPIAO_OPERATOR_TOKENS")
    raise typer.Exit(2)


def _read_operators(path: Path) -> dict[str, str]:
    """{name: hex} of the file (none if it does not exist yet); exit 2 naming the line when it is damaged."""
    from shared.audit import read_operator_file

    try:
        return {name: digest for digest, name in read_operator_file(path).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def _new_operator_token(name: str) -> tuple[str, str]:
    """(token, its SHA-256 hex) for an operator named `name`; exit 2 if the name will not do."""
    import secrets

    from shared.audit import parse_operator_tokens

    token = "fop_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        parse_operator_tokens(f"{name}:{digest}")
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    return token, digest


OPERATORS_FILE = typer.Option(None, "--file", help="the operators file (default: FAPIAO_OPERATOR_TOKENS_FILE, "
                                                   "which `make up` sets to .run/operators)")


@operators_app.command("token")
def operators_token(name: str = typer.Argument(..., help="the operator's name, e.g. alice")) -> None:
    """A new token for an operator: the token (give it to them, once) and the FAPIAO_OPERATOR_TOKENS entry (no
    secret: a hash) that every service needs to know them by. With an operators file, `add` does both at once."""
    token, digest = _new_operator_token(name)
    console = Console()
    console.print(f"Token for {name} (shown this once):")
    console.print(token, highlight=False, soft_wrap=True)
    console.print("Add this entry to FAPIAO_OPERATOR_TOKENS (comma-separated) for every service, then restart them:")
    console.print(f"{name}:{digest}", highlight=False, soft_wrap=True)


@operators_app.command("add")
def operators_add(name: str = typer.Argument(..., help="the operator's name, e.g. alice"),
                  replace: bool = typer.Option(False, "--replace", help="give an existing operator a new token "
                                                                        "(the old one stops working)"),
                  file: Path | None = OPERATORS_FILE, as_json: bool = AS_JSON) -> None:
    """Add an operator to the operators file and print their token (shown this once). Every service reading the
    file accepts it within a second; no restart."""
    from shared.audit import write_operator_file

    path = _operators_file(file)
    entries = _read_operators(path)
    if name in entries and not replace:
        err.print(f"[red]operator {name} exists already[/red] (--replace gives them a new token)", highlight=False)
        raise typer.Exit(2)
    token, digest = _new_operator_token(name)
    write_operator_file(path, {**entries, name: digest})
    if as_json:
        _emit({"name": name, "token": token, "file": str(path)})
        return
    console = Console()
    console.print(f"Operator {name} added to {path}. Their token (shown this once):")
    console.print(token, highlight=False, soft_wrap=True)


@operators_app.command("revoke")
def operators_revoke(name: str = typer.Argument(..., help="the operator to take out"),
                     file: Path | None = OPERATORS_FILE) -> None:
    """Take an operator out of the operators file: every service reading it refuses their token within a
    second. (An operator in FAPIAO_OPERATOR_TOKENS is taken out there, and the services restarted.)"""
    from shared.audit import write_operator_file

    path = _operators_file(file)
    entries = _read_operators(path)
    if name not in entries:
        err.print(f"[red]no operator {name} in {path}[/red]", highlight=False)
        raise typer.Exit(2)
    del entries[name]
    write_operator_file(path, entries)
    Console().print(f"Operator {name} revoked: their token is refused within a second.")


@operators_app.command("list")
def operators_list(file: Path | None = OPERATORS_FILE, as_json: bool = AS_JSON) -> None:
    """The operators in the file (names only: it holds no tokens)."""
    path = _operators_file(file)
    names = sorted(_read_operators(path))
    if as_json:
        _emit({"file": str(path), "operators": names})
        return
    Console().print(f"{len(names)} operator(s) in {path}: {', '.join(names) or '(none)'}", highlight=False)


@app.command("audit")
def audit(limit: int = typer.Option(50, min=1, max=1000, help="the newest N of each service"),
          actor: str | None = typer.Option(None, help="one operator's changes only"),
          as_json: bool = AS_JSON) -> None:
    """What operators changed, newest first, across the five services: who (and for whom), what, when, from
    where, and the answer's status."""
    _load_stack_env()
    token = _admin_token()
    items: list[dict[str, Any]] = []
    missing: list[str] = []
    for service, port in SERVICES.items():
        params: dict[str, str | int] = {"limit": limit, **({"actor": actor} if actor else {})}
        try:
            with httpx.Client(timeout=httpx.Timeout(10, connect=3)) as client:
                r = client.get(f"{_url(service, port)}/admin/audit", params=params,
                               headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            missing.append(f"{service} ({type(exc).__name__})")
            continue
        if r.status_code != 200:
            missing.append(f"{service} ({r.status_code})")
            continue
        items += r.json()["items"]
    items.sort(key=lambda i: i["at"], reverse=True)
    if as_json:
        _emit({"items": items, "unavailable": missing})
    else:
        table = Table("at", "service", "operator", "for", "request", "status", "from", title="Operator actions")
        for i in items:
            table.add_row(i["at"][:19], i["service"], i["actor"], i["on_behalf_of"] or "", f"{i['method']} {i['path']}",
                          str(i["status"]), i["client"] or "")
        Console().print(table)
        if missing:
            err.print(f"not read: {', '.join(missing)}")
    if missing:
        raise typer.Exit(2)


# --- backups ---------------------------------------------------------------------------------------------------

backup_app = typer.Typer(no_args_is_help=True, help="Backups of the services' databases, and restoring one.")
app.add_typer(backup_app, name="backup")


@backup_app.command("create")
def backup_create(
    out: Path = typer.Option(Path("."), "--out", help="a directory (the file is named after the time) or a file"),
    as_json: bool = AS_JSON,
) -> None:
    """Dump the issuer's, sync's, the reconciler's and the notifier's schemas into one file, with a manifest: the
    time, the dump's SHA-256, and where each Kafka topic ended and each consumer group had committed."""
    _load_stack_env()
    from fapiao.backup import BackupError, create_backup

    database_url = os.environ.get("FAPIAO_DATABASE_URL")
    if not database_url:
        err.print("no database: set FAPIAO_DATABASE_URL (or run `make up`)")
        raise typer.Exit(2)
    try:
        path, manifest = create_backup(database_url=database_url, out=out,
                                       kafka_bootstrap=os.environ.get("FAPIAO_KAFKA_BOOTSTRAP"),
                                       topic_prefix=os.environ.get("FAPIAO_TOPIC_PREFIX", ""))
    except BackupError as exc:
        err.print(f"backup failed: {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"file": str(path), **manifest}, ensure_ascii=False))
        return
    kafka = manifest["kafka"]
    topics = kafka.get("topics") or {}
    console = Console()
    console.print(f"Backup written to {path} ({manifest['dump']['bytes']:,} bytes of dump, schemas "
                  f"{', '.join(manifest['schemas'])}), taken at {manifest['taken_at']}.")
    if "error" in kafka:
        console.print(f"Kafka positions not recorded: {kafka['error']}")
    else:
        console.print(f"Kafka positions recorded for {len(topics)} topics and {len(kafka.get('groups') or {})} "
                      "consumer groups.")


@backup_app.command("restore")
def backup_restore(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a file `fapiao backup create` wrote"),
    yes: bool = typer.Option(False, "--yes", help="yes, replace the services' data with the backup's"),
    as_json: bool = AS_JSON,
) -> None:
    """Replace the services' schemas with the backup's (one transaction), then let the reconciler heal: every
    invoice the authority holds from after the backup is found and reported, with what to do about it."""
    _load_stack_env()
    from fapiao.backup import BackupError, read_manifest, restore_backup

    database_url = os.environ.get("FAPIAO_DATABASE_URL")
    if not database_url:
        err.print("no database: set FAPIAO_DATABASE_URL (or run `make up`)")
        raise typer.Exit(2)
    try:
        manifest = read_manifest(file)
        if not yes:
            err.print(f"this replaces the data of {', '.join(manifest['schemas'])} with the backup taken at "
                      f"{manifest['taken_at']}; everything since is lost here (the authority keeps it). "
                      "Run again with --yes to go ahead.")
            raise typer.Exit(2)
        restored = restore_backup(database_url=database_url, path=file)
    except BackupError as exc:
        err.print(f"restore failed: {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"file": str(file), "taken_at": manifest["taken_at"],
                               "restored_at": restored.restored_at.isoformat(),
                               "sweep_windows": restored.sweep_windows}))
        return
    Console().print(f"Restored the backup taken at {manifest['taken_at']}. The reconciler sweeps "
                    f"{restored.sweep_windows} (seller, day) windows now: what the authority holds from after the "
                    "backup shows as orphans lost by the restore, each with what to do.")


# --- red letters (红冲) and verification (查验), with the tenant's own key -----------------------------------

red_letter_app = typer.Typer(no_args_is_help=True, help="Red-letter credit notes: ask, list, confirm, reject.")
app.add_typer(red_letter_app, name="red-letter")
TENANT_KEY = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY", help="the tenant's API key")


def _form_line(text: str) -> dict[str, str | int]:
    """'0:-100.00' or '0:-100.00:-1' (line index, negative amount, negative quantity) -> a form line."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        err.print(f"[red]--line {text}:[/red] write LINE:AMOUNT[:QUANTITY], e.g. 0:-100.00:-1")
        raise typer.Exit(2)
    line: dict[str, str | int] = {"line": int(parts[0]), "amount": parts[1]}
    if len(parts) == 3:
        line["quantity"] = parts[2]
    return line


def _print_form(f: dict[str, Any]) -> None:
    console = Console()
    console.print(f"Form {f['form_no'] or '(not numbered yet)'} ({f['id']}): {f['status']} — invoice {f['number']} "
                  f"of {f['seller_tax_id']}, {f['scope']}, total {f['total']}, reason {f['reason_code']}")
    console.print(f"  reason:      {f['reason']}")
    if f.get("next_action"):
        console.print(f"  next action: {f['next_action']}")
    if f.get("red_invoice_number"):
        console.print(f"  red invoice: {f['red_invoice_number']}")


@red_letter_app.command("create")
def red_letter_create(invoice_id: str = typer.Argument(..., help="the blue invoice's id"),
                      reason: str = typer.Option(..., "--reason",
                                                 help="01 error, 02 returned, 03 stopped, 04 discount"),
                      line: list[str] = typer.Option(None, "--line", help="LINE:AMOUNT[:QUANTITY] to reverse part "
                                                                          "of a line (repeatable); none: all of it"),
                      note: str = typer.Option(None, "--note"), api_key: str = TENANT_KEY,
                      as_json: bool = AS_JSON) -> None:
    """Ask for a red-letter form on a blue invoice (retried safely: one Idempotency-Key for every attempt)."""
    _load_stack_env()
    body: dict[str, Any] = {"reason_code": reason, **({"lines": [_form_line(x) for x in line]} if line else {}),
                            **({"note": note} if note else {})}
    key = _key("red-letter", invoice_id, json.dumps(body, sort_keys=True), uuid.uuid4().hex)
    f = _call("POST", _url("issuer", 8000), f"/v1/invoices/{invoice_id}/red-letter", token=_api_key(api_key),
              body=body, ok=(202,), idempotency_key=key, retries=3)
    if as_json:
        _emit(f)
    else:
        _print_form(f)


@red_letter_app.command("list")
def red_letter_list(awaiting: bool = typer.Option(False, "--awaiting", help="only forms waiting for my decision"),
                    status_: str = typer.Option(None, "--status", help="requested | pending | confirmed | rejected | "
                                                                       "voided | failed"),
                    api_key: str = TENANT_KEY, as_json: bool = AS_JSON) -> None:
    """The forms this tenant is a party to (as seller, or as buyer), newest first."""
    _load_stack_env()
    params: dict[str, Any] = {"awaiting": str(awaiting).lower(), **({"status": status_} if status_ else {})}
    page = _call("GET", _url("issuer", 8000), "/v1/red-letter-forms", token=_api_key(api_key), params=params)
    if as_json:
        _emit(page)
        return
    table = Table("form", "status", "role", "invoice", "total", "next action")
    for f in page["items"]:
        table.add_row(f["form_no"] or f["id"], f["status"], f["role"], f["number"], f["total"], f["next_action"] or "")
    Console().print(table)


def _decide(form_id: str, action: str, note: str | None, api_key: str | None, as_json: bool) -> None:
    _load_stack_env()
    f = _call("POST", _url("issuer", 8000), f"/v1/red-letter-forms/{form_id}/{action}", token=_api_key(api_key),
              body={"note": note} if note else {}, ok=(200, 202), retries=3)
    if as_json:
        _emit(f)
    else:
        _print_form(f)


@red_letter_app.command("confirm")
def red_letter_confirm(form_id: str = typer.Argument(..., help="the form's id (fapiao red-letter list)"),
                       note: str = typer.Option(None, "--note"), api_key: str = TENANT_KEY,
                       as_json: bool = AS_JSON) -> None:
    """As the buyer, confirm a form waiting for you; the red invoice is then issued."""
    _decide(form_id, "confirm", note, api_key, as_json)


@red_letter_app.command("reject")
def red_letter_reject(form_id: str = typer.Argument(..., help="the form's id (fapiao red-letter list)"),
                      note: str = typer.Option(None, "--note"), api_key: str = TENANT_KEY,
                      as_json: bool = AS_JSON) -> None:
    """As the buyer, reject a form waiting for you; nothing is reversed."""
    _decide(form_id, "reject", note, api_key, as_json)


@app.command("verify")
def verify(number: str = typer.Argument(..., help="the invoice's 20-digit number"),
           issue_date: str = typer.Option(..., "--date", help="its issue date, YYYY-MM-DD"),
           total: str = typer.Option(..., "--total", help="its total including tax, e.g. 226.00"),
           api_key: str = TENANT_KEY, as_json: bool = AS_JSON) -> None:
    """发票查验: ask the tax authority about an invoice by number, date and total (exit 1 unless it is normal)."""
    _load_stack_env()
    answer = _call("POST", _url("issuer", 8000), "/v1/verify", token=_api_key(api_key), retries=3,
                   body={"number": number, "issue_date": issue_date, "total": total})
    if as_json:
        _emit(answer)
    else:
        extra = f", {answer['remaining_total']} left" if answer.get("remaining_total") else ""
        Console().print(f"{number}: {answer['result']} ({answer['result_text']}){extra}")
    if answer["result"] != "normal":
        raise typer.Exit(1)


if __name__ == "__main__":
    main()
