"""`python -m services.taxstore` serves the simulated tax store; `python -m services.taxstore migrate` only migrates."""

from __future__ import annotations

import sys

from services.taxstore.app import create_app, migrate
from services.taxstore.settings import TaxstoreSettings
from shared.serve import run_service

if __name__ == "__main__":
    # A short graceful shutdown: requests hung by the timeout fault must not hold a restart for long.
    sys.exit(run_service(sys.argv[1:], settings_class=TaxstoreSettings, create_app=create_app, migrate=migrate,
                         graceful_shutdown=3))
