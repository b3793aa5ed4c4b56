"""CLI command modules; jobs/cli.py registers each one's click commands with cli.add_command."""
