"""The one Kubernetes I/O layer both processes use: client calls, watches, Events, backoff, HTTP."""
