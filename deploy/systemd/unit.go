// Package systemd holds circlebot.service, the unit for a plain EC2 install,
// which the CloudFormation template (deploy/cloudformation) installs on its
// replicas as committed.
package systemd

import _ "embed"

// Unit is circlebot.service as committed.
//
//go:embed circlebot.service
var Unit []byte
