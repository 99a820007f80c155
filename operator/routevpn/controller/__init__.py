"""routevpn.controller."""
