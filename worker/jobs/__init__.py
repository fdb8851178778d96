"""The life of a job in order: kinds, start, submit, settle, tracking, finishing, admission, messages."""
