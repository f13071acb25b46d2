"""`fapiao` — the operator CLI.

    fapiao tenants create --name N --tax-id USCC     register a seller; prints its API key once
    fapiao import FILE.csv --api-key KEY              import historical invoices, with a progress bar
    fapiao summary --month 2026-11                    发票汇总确认: a month here vs. at the tax authority

Settings come from FAPIAO_* variables; when a local stack runs (`make up`), from its `.run/stack.env`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fapiao Sync operator CLI.")
tenants_app = typer.Typer(no_args_is_help=True, help="Seller enterprises and their API keys.")
app.add_typer(tenants_app, name="tenants")
err = Console(stderr=True)


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
    from services.issuer import service
    from services.issuer.app import migrate
    from services.issuer.settings import IssuerSettings
    from shared.db import make_engine, session_factory, transaction
    from shared.errors import FapiaoError

    try:
        settings = IssuerSettings()  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - report configuration problems plainly
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def run() -> tuple[Any, str]:
        await migrate(settings)
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            async with transaction(session_factory(engine)) as session:
                return await service.create_tenant(session=session, name=name, tax_id=tax_id)
        finally:
            await engine.dispose()

    try:
        tenant, key = asyncio.run(run())
    except FapiaoError as exc:
        reasons = "; ".join(f"{e.path}: {e.reason}" for e in getattr(exc, "errors", [])) or exc.detail
        err.print(f"[red]{exc.title}:[/red] {reasons}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"id": str(tenant.id), "name": tenant.name, "tax_id": tenant.tax_id, "api_key": key}))
        return
    typer.echo(f"Tenant {tenant.name} ({tenant.tax_id}) created, id {tenant.id}.")
    typer.echo(f"API key (shown once, keep it safe): {key}")


def _chunks(path: Path, max_invoices: int) -> tuple[list[str], list[list[tuple[int, list[str]]]]]:
    """Split the file into chunks of whole invoices, remembering each row's number in the file."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise typer.BadParameter("the file is empty")
        try:
            number_col = [h.strip() for h in header].index("number")
        except ValueError:
            raise typer.BadParameter("the header has no 'number' column") from None
        chunks: list[list[tuple[int, list[str]]]] = [[]]
        seen: set[str] = set()
        for n, row in enumerate(reader, start=2):
            number = row[number_col].strip() if number_col < len(row) else ""
            if number not in seen and len(seen) >= max_invoices:
                chunks.append([])
                seen = set()
            seen.add(number)
            chunks[-1].append((n, row))
    return header, [c for c in chunks if c]


@app.command("import")
def import_csv(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY", help="the tenant's API key"),
    url: str = typer.Option(None, "--url", envvar="FAPIAO_ISSUER_URL", help="issuer base URL"),
    chunk: int = typer.Option(500, min=1, max=1000, help="invoices per request"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import historical invoices from CSV (one row per invoice line). Bad rows are reported, good ones kept."""
    _load_stack_env()
    url = url or os.environ.get("FAPIAO_ISSUER_URL") or "http://127.0.0.1:8000"
    api_key = _api_key(api_key)
    header, chunks = _chunks(file, chunk)
    totals = {"rows": 0, "invoices": 0, "created": 0, "existing": 0, "conflicts": 0, "rejected": 0}
    errors: list[dict[str, Any]] = []
    total_rows = sum(len(c) for c in chunks)
    progress = Progress(TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TimeRemainingColumn(), console=err, disable=as_json or not err.is_terminal)
    with progress, httpx.Client(base_url=url, timeout=httpx.Timeout(120, connect=5),
                                headers={"Authorization": f"Bearer {api_key}"}) as client:
        task = progress.add_task("import", total=total_rows)
        for rows in chunks:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(header)
            writer.writerows(r for _, r in rows)
            try:
                resp = client.post("/v1/invoices/import", content=buf.getvalue().encode(),
                                   headers={"Content-Type": "text/csv"})
            except httpx.HTTPError as exc:
                err.print(f"[red]cannot reach the issuer at {url}:[/red] {exc}")
                raise typer.Exit(1) from None
            if resp.status_code != 200:
                err.print(f"[red]import failed ({resp.status_code}):[/red] {resp.text[:500]}")
                raise typer.Exit(1)
            body = resp.json()
            line_of = {i + 2: n for i, (n, _) in enumerate(rows)}  # request row -> file row
            for e in body["errors"]:
                errors.append({**e, "row": line_of.get(e["row"], e["row"])})
            for k in totals:
                totals[k] += body[k]
            progress.advance(task, len(rows))
    if as_json:
        typer.echo(json.dumps({**totals, "errors": errors}, ensure_ascii=False))
    else:
        console = Console()
        console.print(f"{totals['invoices']} invoices in {totals['rows']} rows: {totals['created']} created, "
                      f"{totals['existing']} already present, {totals['conflicts']} conflicts, "
                      f"{totals['rejected']} rejected.")
        if errors:
            table = Table("row", "column", "number", "reason", title="Rows with errors")
            for e in errors[:200]:
                table.add_row(str(e["row"]), e["column"], e.get("number") or "", e["reason"])
            console.print(table)
            if len(errors) > 200:
                console.print(f"… and {len(errors) - 200} more (use --json for all)")
    if totals["rejected"] or totals["conflicts"]:
        raise typer.Exit(1)


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
    token = os.environ.get("FAPIAO_ADMIN_TOKEN")
    if token:
        return token
    from fapiao.stack import state_dir

    token_file = state_dir() / "admin-token"
    if token_file.exists():
        return token_file.read_text().strip()
    err.print("[red]no admin token:[/red] set FAPIAO_ADMIN_TOKEN (or run against a `make up` stack)")
    raise typer.Exit(2)


def _get_json(url: str, path: str, *, token: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a JSON object; exits 2 with the service's own words when it cannot be had."""
    try:
        resp = httpx.get(f"{url.rstrip('/')}{path}", params=params, timeout=httpx.Timeout(60, connect=5),
                         headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {type(exc).__name__}")
        raise typer.Exit(2) from None
    if resp.status_code != 200:
        try:
            body = resp.json()
            reasons = "; ".join(f"{e['path']}: {e['reason']}" for e in body.get("errors", [])) or body.get("detail")
        except (ValueError, AttributeError, KeyError, TypeError):
            reasons = resp.text[:300]
        err.print(f"[red]{resp.status_code}:[/red] {reasons}")
        raise typer.Exit(2)
    return resp.json()  # type: ignore[no-any-return]


@app.command("summary")
def summary(
    month: str = typer.Option(..., "--month", help="the calendar month, YYYY-MM"),
    tax_id: str = typer.Option(None, "--tax-id",
                               help="any seller, asked of the reconciler with the admin token (operators)"),
    api_key: str = typer.Option(None, "--api-key", envvar="FAPIAO_API_KEY",
                                help="the tenant's API key (the default: your own invoices, via the issuer)"),
    url: str = typer.Option(None, "--url", help="issuer URL (or, with --tax-id, the reconciler's)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """发票汇总确认: one seller's month, counts and sums (blue / red) here and at the tax authority, and every
    difference. Exit status 0 when both sides agree, 1 when they differ, 2 when it cannot be had."""
    _load_stack_env()
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


def main() -> None:
    app(prog_name="fapiao")


if __name__ == "__main__":
    sys.exit(main())
