"""mjqueue's runtime: settings, the upstream client, the ledger, admission, webhooks, CLI."""
