"""Store functions. Each takes a Session and never commits: the caller opens the transaction
(pipeline.db.transaction). Callers that do: the jobs; in the receiver, the group-commit writer
(receiver/writer.py), the portal's checkout (pipeline.checkout) and status check (pipeline.status_check),
and the reads of the portal and /metrics; and the sandbox."""
