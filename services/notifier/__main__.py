"""`python -m services.notifier` runs the service; `python -m services.notifier migrate` only migrates."""

from __future__ import annotations

import sys

from services.notifier.app import create_app, migrate
from services.notifier.settings import NotifierSettings
from shared.serve import run_service

if __name__ == "__main__":
    sys.exit(run_service(sys.argv[1:], settings_class=NotifierSettings, create_app=create_app, migrate=migrate))
