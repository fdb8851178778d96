"""Redis state, no Celery, no HTTP: keys, records, ledger, slots, stored images, the per-process runtime."""
