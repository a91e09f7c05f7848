"""widgets of the tunix-tui console."""
