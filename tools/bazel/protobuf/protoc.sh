#!/bin/sh
# Debian's protoc; its version matches the system libprotobuf the generated code links against.
exec /usr/bin/protoc "$@"
