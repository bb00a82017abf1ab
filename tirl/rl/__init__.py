"""tirl.rl."""
