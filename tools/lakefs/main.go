// Command lakefs is a thin wrapper that builds the upstream lakeFS server
// from the Go module proxy, so no prebuilt binary or Docker image is needed.
package main

import "github.com/treeverse/lakefs/cmd/lakefs/cmd"

func main() {
	cmd.Execute()
}
