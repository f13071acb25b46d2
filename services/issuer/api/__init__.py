"""The issuer's HTTP doors: routes parse a request, make one service call and answer its outcome (answers.py)."""
