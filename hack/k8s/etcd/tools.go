//go:build tools

// Package tools names the etcd command hack/local-cluster.sh builds, so `go mod tidy`
// keeps every module it needs in go.sum. The build tag keeps it out of any build.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
