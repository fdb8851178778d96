"""Local stacks: the embedded Valkey, processes, `mjq up` and the demo."""
