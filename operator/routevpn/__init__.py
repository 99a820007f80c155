"""routevpn: route-based IPsec VPNs (strongSwan + VTI/XFRM interfaces) as Kubernetes objects."""

__version__ = "0.1.0"
