//go:build tools

// Package tools pins Docker Compose v2 (the `docker compose` CLI plugin) as a dependency of
// this wrapper module, so build_go_server.sh can build it from the Go module proxy where
// no docker-compose-plugin package is served (Debian bookworm has only Compose v1).
package tools

import _ "github.com/docker/compose/v5/cmd"
