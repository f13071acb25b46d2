"""`python -m services.issuer` serves the API (with FAPIAO_API_WORKERS above 1, as several processes:
services/issuer/workers.py); `python -m services.issuer migrate` only migrates."""

from __future__ import annotations

import sys

from services.issuer.app import create_app, migrate
from services.issuer.settings import IssuerSettings
from services.issuer.workers import supervise
from shared.serve import run_service

if __name__ == "__main__":
    settings = IssuerSettings()
    if sys.argv[1:2] != ["migrate"] and settings.workers > 1 and settings.process_role == "all":
        sys.exit(supervise(settings, migrate=migrate))  # FAPIAO_API_WORKERS: several processes, one port
    sys.exit(run_service(sys.argv[1:], settings_class=IssuerSettings, create_app=create_app, migrate=migrate))
