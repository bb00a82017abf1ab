"""tirl.eval."""
