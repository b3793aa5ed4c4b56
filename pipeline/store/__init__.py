"""Store functions. Each takes a Session and never commits: only jobs open transactions (pipeline.db.transaction)."""
