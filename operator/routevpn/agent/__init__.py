"""routevpn.agent."""
