"""tirl.reward."""
