"""The console's core, free of any UI (never imports Textual): run state, event reading, profile forms."""
