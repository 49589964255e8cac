package iam

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/circlebot/circlebot/internal/config"
)

// Needs names, for each placeholder, the setting that gives it a value:
// what to set when `bot iam-policy` leaves a statement out.
var Needs = map[string]string{
	"Account":         "--account",
	"Bucket":          "backup.bucket",
	"BuilderGroup":    "builders.asg_name",
	"KmsKeys":         "aws.kms_key_arns",
	"NameTag":         "services_box.name_tag",
	"OpsRole":         "ops.role_arn",
	"Partition":       "aws.region",
	"Region":          "aws.region",
	"ReplicaTag":      "replica.name_tag",
	"SecretArn":       "secret.secrets_manager_id",
	"ServicesBoxRole": "services_box.role_arn",
	"SlackSecret":     "SLACK_SECRET_ARN (the Slack tokens' secret)",
	"Table":           "store.backend: dynamodb (and store.table)",
	"TargetGroups":    "failover.discovery: load-balancer (and failover.target_group_arns)",
}

var accountID = regexp.MustCompile(`^[0-9]{12}$`)

// ValuesFor fills the placeholders from a validated config. account is
// the 12-digit AWS account ID, or "" for any ("*"): the policy needs no
// call to AWS to be rendered. An unset aws.region is any region too.
func ValuesFor(c config.Config, account string) (Values, error) {
	region := c.AWS.Region
	if region == "" {
		region = "*"
	}
	switch {
	case account == "":
		account = "*"
	case !accountID.MatchString(account):
		return nil, fmt.Errorf("account %q is not a 12-digit AWS account ID", account)
	}
	for _, n := range []struct{ key, v string }{{"services_box.name_tag", c.ServicesBox.NameTag}, {"replica.name_tag", c.Replica.NameTag}} {
		if err := checkLiteral(n.key, n.v); err != nil {
			return nil, err
		}
	}
	if c.ServicesBox.NameTag == "" {
		return nil, fmt.Errorf("services_box.name_tag is empty: the policy keys every destructive statement on it")
	}
	v := Values{
		"Partition":       {partition(c.AWS.Region)},
		"Region":          {region},
		"Account":         {account},
		"NameTag":         {c.ServicesBox.NameTag},
		"ReplicaTag":      one(c.Replica.NameTag),
		"Bucket":          one(c.Backup.Bucket),
		"BuilderGroup":    one(c.Builders.ASGName),
		"ServicesBoxRole": one(c.ServicesBox.RoleARN),
		"OpsRole":         one(c.Ops.RoleARN),
		"KmsKeys":         append([]string(nil), c.AWS.KMSKeyARNs...),
		// The Slack tokens' secret is a full ARN (SLACK_SECRET_ARN), so
		// it names exactly that secret.
		"SlackSecret":  one(c.Secrets.SecretARN),
		"SecretArn":    nil,
		"Table":        nil,
		"TargetGroups": nil,
	}
	if c.Store.Backend == "dynamodb" {
		v["Table"] = one(c.Store.Table)
	}
	if c.Failover.Discovery == "load-balancer" {
		v["TargetGroups"] = append([]string(nil), c.Failover.TargetGroupARNs...)
	}
	if id := c.Secret.SecretsManagerID; id != "" {
		if strings.HasPrefix(id, "arn:") {
			v["SecretArn"] = []string{id}
		} else {
			// Secrets Manager appends a hyphen and six random characters
			// to a secret's name in its ARN: "-??????" matches exactly
			// that secret, not others whose names start the same.
			v["SecretArn"] = []string{fmt.Sprintf("arn:%s:secretsmanager:%s:%s:secret:%s-??????", partition(c.AWS.Region), region, account, id)}
		}
	}
	return v, nil
}

func one(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// partition is the ARN partition of a region ("aws" when unknown).
func partition(region string) string {
	switch {
	case strings.HasPrefix(region, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	default:
		return "aws"
	}
}
