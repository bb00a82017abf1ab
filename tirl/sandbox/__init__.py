"""tirl.sandbox."""
