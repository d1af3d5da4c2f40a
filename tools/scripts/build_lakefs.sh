#!/usr/bin/env bash
# Builds the lakeFS server from the Go module proxy (tools/lakefs wrapper module),
# cached by version.   usage: tools/scripts/build_lakefs.sh    prints the binary's path last
exec "$(dirname "$0")/build_go_server.sh" lakefs
