"""CLI command modules. Each exposes COMMANDS, a list of click commands/groups that jobs.cli registers."""
