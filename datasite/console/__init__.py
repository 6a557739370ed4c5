"""The data owner's web console (``datasite console NAME``): review, approve, run, release,
budgets, ledger and forget in a browser, through the same owner API as the CLI."""
