"""The callback receiver: a small Starlette app that validates, appends and answers. It never changes donation state."""
