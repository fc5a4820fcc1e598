"""Training stages and the shared loop (torch is imported here)."""
