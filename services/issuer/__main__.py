"""`python -m services.issuer` serves the API; `python -m services.issuer migrate` only migrates."""

from __future__ import annotations

import sys

from services.issuer.app import create_app, migrate
from services.issuer.settings import IssuerSettings
from shared.serve import run_service

if __name__ == "__main__":
    sys.exit(run_service(sys.argv[1:], settings_class=IssuerSettings, create_app=create_app, migrate=migrate))
