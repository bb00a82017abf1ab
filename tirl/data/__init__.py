"""tirl.data."""
