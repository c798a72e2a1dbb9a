"""Command-line interface: one module per sub-command, each thin (parse, call the library, report)."""
