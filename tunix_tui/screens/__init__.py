"""screens of the tunix-tui console."""
