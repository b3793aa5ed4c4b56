"""Jobs: one module per job, each a plain function that owns its transaction; plus the CLI and scheduler."""
