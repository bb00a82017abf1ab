"""tirl.engines."""
