"""`python -m services.reconciler` runs the service; `python -m services.reconciler migrate` only migrates."""

from __future__ import annotations

import sys

from services.reconciler.app import create_app, migrate
from services.reconciler.settings import ReconcilerSettings
from shared.serve import run_service

if __name__ == "__main__":
    sys.exit(run_service(sys.argv[1:], settings_class=ReconcilerSettings, create_app=create_app, migrate=migrate))
