//go:build tools

// Package tools names the commands hack/local-cluster.sh builds, so `go mod tidy`
// keeps every module they need in go.sum. The build tag keeps it out of any build.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
