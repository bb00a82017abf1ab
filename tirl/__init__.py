"""tirl: tool-integrated reinforcement learning (rStar2-Agent as usable software)."""
__version__ = "0.1.0"
