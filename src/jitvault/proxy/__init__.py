"""Protocol-free session machinery (listeners, session registry, kill on expiry). Later issue."""
