"""tirl.dispatch."""
