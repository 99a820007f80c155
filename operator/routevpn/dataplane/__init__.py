"""routevpn.dataplane."""
