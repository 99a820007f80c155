"""routevpn.kube: how routevpn talks to the Kubernetes API server."""
