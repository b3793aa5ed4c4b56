"""The callback receiver: a small Starlette app that validates, appends and answers. Callbacks never change
donation state here (the fold derives it from the log); the portal's checkout creates donations."""
