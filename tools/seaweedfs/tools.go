//go:build tools

// Package tools pins the SeaweedFS server (its `weed` command) as a dependency of
// this wrapper module, so build_go_server.sh can build it from the Go module proxy.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
