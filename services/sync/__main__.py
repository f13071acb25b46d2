"""`python -m services.sync` runs the service; `python -m services.sync migrate` only migrates."""

from __future__ import annotations

import sys

from services.sync.app import create_app, migrate
from services.sync.settings import SyncSettings
from shared.serve import run_service

if __name__ == "__main__":
    sys.exit(run_service(sys.argv[1:], settings_class=SyncSettings, create_app=create_app, migrate=migrate))
