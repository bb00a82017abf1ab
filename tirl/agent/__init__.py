"""tirl.agent."""
