package iamcheck

import (
	_ "embed"
	"strings"
)

// The policy the README gave before issue 12 (verbatim, with its
// SharedState addition left out), kept to show that the tests of issue 12
// fail on it: no ec2:DescribeSubnets, ec2:CreateTags on instances,
// volumes and images with no condition, no KMS.
//
//go:embed testdata/readme-policy-before-issue-12.json
var readmePolicy string

// ReadmePolicyBeforeIssue12 returns that policy with its placeholders
// filled with the sandbox's names and moto's account.
func ReadmePolicyBeforeIssue12() []byte {
	return []byte(strings.NewReplacer(
		"ACCOUNT", MotoAccount,
		"YOUR-SERVICES-BOX-ROLE", "circleci-services",
		"YOUR-BUILDER-ASG", "circleci-builders",
		"YOUR-SECRET-", "circleci/passphrase-",
		"YOUR-BACKUP-BUCKET", "circleci-backups-sandbox",
	).Replace(readmePolicy))
}
