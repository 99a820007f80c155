//go:build tools

// Package tools names the node's runtime commands hack/node.sh builds, so `go mod tidy`
// keeps every module they need in go.sum. The build tag keeps it out of any build.
// (The kubelet comes from hack/k8s, the module the control plane is built from.)
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/opencontainers/runc"
)
