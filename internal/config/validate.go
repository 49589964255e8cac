package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/commands"

	"github.com/robfig/cron/v3"
)

// Problem is one bad setting: the dotted key and why it is wrong.
type Problem struct {
	Key string
	Why string
}

// ValidationError lists every problem so one check-config run shows them all.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d problem(s):", len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  %s: %s", p.Key, p.Why)
	}
	return b.String()
}

var (
	channelID = regexp.MustCompile(`^[CGD][A-Z0-9]{2,}$`)
	// approvalChannel: a channel people share, never a direct message.
	approvalChannel = regexp.MustCompile(`^[CG][A-Z0-9]{2,}$`)
	userID          = regexp.MustCompile(`^[UW][A-Z0-9]{2,}$`)
	bucketRE        = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	kmsKeyARN       = regexp.MustCompile(`^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$`)
)

// CronParser accepts the standard five fields and descriptors such as
// "@daily"; schedules are validated and run with the same parser.
var instanceType = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)

// roleARN is an IAM role's ARN: arn:<partition>:iam::<account>:role/<path/>name.
var roleARN = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/(?:[\x21-\x7e]*/)?[\w+=,.@-]{1,64}$`)

var subnetID = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)

var dynamoTable = regexp.MustCompile(`^[A-Za-z0-9_.-]{3,255}$`)

var CronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Validate checks the settings. It does not need the secrets; serving does
// (see ValidateServe).
func (c *Config) Validate() error {
	var p []Problem
	bad := func(key, why string, args ...any) { p = append(p, Problem{key, fmt.Sprintf(why, args...)}) }

	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		bad("listen", "%q is not host:port (e.g. \":8080\")", c.Listen)
	}
	if m := c.Metrics.Listen; m != "" {
		if _, port, err := net.SplitHostPort(m); err != nil || port == "" {
			bad("metrics.listen", "%q is not host:port (e.g. \"127.0.0.1:9090\"; empty: /metrics is not served)", m)
		} else if sameAddress(c.Listen, m) {
			bad("metrics.listen", "%q is the address of listen, which Slack reaches: /metrics needs an address of its own", m)
		}
	}
	if u := c.Console.User; u != "" && !userID.MatchString(u) {
		bad("console.user", "%q is not a Slack user ID (U… or W…)", u)
	}
	switch c.Store.Backend {
	case "bbolt":
		if strings.TrimSpace(c.DataDir) == "" {
			bad("data_dir", "must name a directory for the bbolt store")
		}
	case "dynamodb":
		if !dynamoTable.MatchString(c.Store.Table) {
			bad("store.table", "%q is not a DynamoDB table name (3–255 of a-z A-Z 0-9 _ - .)", c.Store.Table)
		}
	default:
		bad("store.backend", "%q must be bbolt (one replica, a file in data_dir) or dynamodb (replicas sharing a table)", c.Store.Backend)
	}
	if d := c.Store.HeartbeatTTL.D(); d < time.Second || d > 10*time.Minute {
		bad("store.heartbeat_ttl", "%s must be between 1s and 10m: a dead replica's operation is announced after it", d)
	}
	if d := c.Store.LeaseTTL.D(); d < time.Second || d > 10*time.Minute {
		bad("store.lease_ttl", "%s must be between 1s and 10m: scheduled work waits up to this long for a new leader", d)
	}
	if !strings.HasPrefix(c.Slack.Command, "/") || strings.ContainsAny(c.Slack.Command, " \t") || len(c.Slack.Command) < 2 {
		bad("slack.command", "%q must be a slash command such as \"/circleci\"", c.Slack.Command)
	}
	for i, ch := range c.Slack.AllowedChannels {
		if !channelID.MatchString(ch) {
			bad(fmt.Sprintf("slack.allowed_channels[%d]", i), "%q is not a Slack channel ID (C…, G… or D…; names change, IDs do not)", ch)
		}
	}
	if c.Slack.ReportChannel != "" && !channelID.MatchString(c.Slack.ReportChannel) {
		bad("slack.report_channel", "%q is not a Slack channel ID", c.Slack.ReportChannel)
	}
	for _, r := range []struct {
		key string
		ids []string
	}{{"roles.viewers", c.Roles.Viewers}, {"roles.operators", c.Roles.Operators}, {"roles.approvers", c.Roles.Approvers}} {
		for i, id := range r.ids {
			if !userID.MatchString(id) {
				bad(fmt.Sprintf("%s[%d]", r.key, i), "%q is not a Slack user ID (U… or W…)", id)
			}
			if slices.Index(r.ids, id) != i {
				bad(fmt.Sprintf("%s[%d]", r.key, i), "%q is listed twice", id)
			}
		}
	}
	switch c.Failover.Discovery {
	case "secondary-ip", "none":
	case "eni":
		if !strings.HasPrefix(c.Failover.ENI, "eni-") {
			bad("failover.eni_id", "discovery eni needs the interface to move (eni-…)")
		}
	case "load-balancer":
		if len(c.Failover.TargetGroupARNs) == 0 {
			bad("failover.target_group_arns", "discovery load-balancer needs the NLB target groups (TCP 80, 443, 4434)")
		}
	default:
		bad("failover.discovery", "%q is not one of secondary-ip, eni, load-balancer, none", c.Failover.Discovery)
	}
	if ip := c.Failover.ServiceIP; ip != "" && net.ParseIP(ip) == nil {
		bad("failover.service_ip", "%q is not an IP address", ip)
	}
	for i, a := range c.Failover.TargetGroupARNs {
		if !strings.HasPrefix(a, "arn:") {
			bad(fmt.Sprintf("failover.target_group_arns[%d]", i), "%q is not a target group ARN", a)
		}
	}
	if u := c.Failover.HealthURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		bad("failover.health_url", "%q is not an http(s) URL", u)
	} else if u != "" {
		if _, err := url.Parse(strings.NewReplacer("{service_ip}", "10.0.0.2", "{ip}", "10.0.0.1").Replace(u)); err != nil {
			bad("failover.health_url", "%q is not a URL: %v", u, err)
		}
		if strings.Contains(u, "{service_ip}") && (c.Failover.Discovery == "load-balancer" || c.Failover.Discovery == "none") {
			bad("failover.health_url", "{service_ip} is the address a secondary-ip or eni failover moves; with discovery %s there is none: use {ip}", c.Failover.Discovery)
		}
	}
	if cmd := c.Failover.OSAddressCommand; cmd != "" && cmd != "none" {
		rest := cmd
		for _, p := range []string{"{service_ip}", "{prefix}", "{mac}", "{mode}"} {
			rest = strings.ReplaceAll(rest, p, "")
		}
		if m := regexp.MustCompile(`\{[a-z_]+\}`).FindString(rest); m != "" {
			bad("failover.os_address_command", "unknown placeholder %s: use {service_ip}, {prefix}, {mac} or {mode}", m)
		} else if !strings.Contains(cmd, "{service_ip}") {
			bad("failover.os_address_command", "must use {service_ip}: it configures the service address in the replica's OS (or set it to none)")
		}
	}
	if d := c.Monitor.Interval.D(); d != 0 && d < 30*time.Second {
		bad("monitor.interval", "%s is too often (CloudWatch data is per minute); 0 turns detection off", d)
	}
	if v := c.Monitor.Channel; v != "" && !channelID.MatchString(v) {
		bad("monitor.channel", "%q is not a Slack channel ID", v)
	}
	if c.Monitor.Cooldown.D() < 0 {
		bad("monitor.cooldown", "must not be negative")
	}
	seenCheck := map[string]bool{}
	for i, ch := range c.Monitor.Checks {
		key := fmt.Sprintf("monitor.checks[%d]", i)
		switch {
		case ch.Name == "" || seenCheck[ch.Name]:
			bad(key+".name", "each check needs a unique name (alerts are kept by it)")
		case ch.Namespace == "" || ch.Metric == "":
			bad(key, "needs namespace and metric")
		case ch.Op != ">" && ch.Op != "<":
			bad(key+".op", "%q must be \">\" or \"<\"", ch.Op)
		case !slices.Contains([]string{"Average", "Maximum", "Minimum", "Sum", "SampleCount"}, ch.Stat):
			bad(key+".stat", "%q is not a CloudWatch statistic (Average, Maximum, Minimum, Sum, SampleCount)", ch.Stat)
		case ch.For < 1:
			bad(key+".for", "must be at least 1 period")
		case ch.Period.D() < time.Minute || ch.Period.D()%time.Minute != 0:
			bad(key+".period", "must be whole minutes (CloudWatch periods), at least 1m")
		case strings.Contains(fmt.Sprint(ch.Dimensions), "{asg}") && c.Builders.ASGName == "":
			bad(key+".dimensions", "uses {asg} but builders.asg_name is not set: the check would never run")
		case ch.Action != "" && !commandOK(ch.Action):
			bad(key+".action", "%q is not a /circleci command (the alert's button runs it)", ch.Action)
		case (ch.Op == ">" && ch.Clear > ch.Threshold) || (ch.Op == "<" && ch.Clear < ch.Threshold):
			bad(key+".clear", "must be on the good side of the threshold (hysteresis)")
		}
		seenCheck[ch.Name] = true
	}
	if c.Builders.RotateBatch < 0 {
		bad("builders.rotate_batch", "must be 0 (a quarter of the fleet) or more")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"failover.stop_timeout", c.Failover.StopTimeout.D()}, {"failover.health_timeout", c.Failover.HealthTimeout.D()}, {"builders.rotate_timeout", c.Builders.RotateTimeout.D()}} {
		if d.v < 10*time.Second || d.v > 6*time.Hour {
			bad(d.key, "%s is outside 10s..6h", d.v)
		}
	}
	for i, t := range c.Restore.FallbackInstanceTypes {
		if !instanceType.MatchString(t) {
			bad(fmt.Sprintf("restore.fallback_instance_types[%d]", i), "%q is not an EC2 instance type (e.g. m5.2xlarge)", t)
		}
	}
	for _, d := range []struct {
		key      string
		v        time.Duration
		min, max time.Duration
	}{{"restore.image_timeout", c.Restore.ImageTimeout.D(), time.Minute, 12 * time.Hour},
		{"restore.stop_timeout", c.Restore.StopTimeout.D(), 10 * time.Second, time.Hour},
		{"restore.health_timeout", c.Restore.HealthTimeout.D(), time.Minute, 6 * time.Hour}} {
		if d.v < d.min || d.v > d.max {
			bad(d.key, "%s is outside %s..%s", d.v, d.min, d.max)
		}
	}
	if ttl := c.Approvals.TTL.D(); ttl < time.Minute || ttl > 24*time.Hour {
		bad("approvals.ttl", "%s is outside 1m..24h: an approval must not outlive the state it was given for", ttl)
	}
	switch ch := c.Approvals.Channel; {
	case ch == "":
	case !approvalChannel.MatchString(ch):
		bad("approvals.channel", "%q is not a Slack channel ID (C… or G…; names change, IDs do not; not a direct message)", ch)
	case len(c.Slack.AllowedChannels) > 0 && !slices.Contains(c.Slack.AllowedChannels, ch):
		bad("approvals.channel", "%s is not in slack.allowed_channels: approvals there would be refused", ch)
	}
	if strings.TrimSpace(c.ServicesBox.NameTag) == "" {
		bad("services_box.name_tag", "must be the Name tag of the Services box (default circleci_services)")
	}
	// The IAM policy matches the boxes by these names (StringLike): a
	// wildcard in one would widen what the bot may stop and terminate.
	for _, n := range []struct{ key, v string }{{"services_box.name_tag", c.ServicesBox.NameTag}, {"replica.name_tag", c.Replica.NameTag}} {
		if strings.ContainsAny(n.v, "*?$") {
			bad(n.key, "%q contains *, ? or $, which the IAM policy would read as a wildcard or a variable", n.v)
		}
	}
	if v := c.ServicesBox.RoleARN; v != "" && !roleARN.MatchString(v) {
		bad("services_box.role_arn", "%q is not an IAM role ARN (arn:aws:iam::<account>:role/<name>; the role, not the instance profile)", v)
	}
	for i, k := range c.AWS.KMSKeyARNs {
		key := fmt.Sprintf("aws.kms_key_arns[%d]", i)
		switch {
		case strings.Contains(k, ":alias/"):
			bad(key, "%q is an alias: give the key ARN (arn:aws:kms:<region>:<account>:key/<id>); IAM grants use of keys, not of aliases", k)
		case !kmsKeyARN.MatchString(k):
			bad(key, "%q is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)", k)
		case slices.Index(c.AWS.KMSKeyARNs, k) != i:
			bad(key, "%q is listed twice", k)
		}
	}
	if c.Replica.NameTag != "" && c.Replica.NameTag == c.ServicesBox.NameTag {
		bad("replica.name_tag", "must differ from services_box.name_tag, or the replica and the primary are indistinguishable")
	}
	if v := c.Replica.Subnet; v != "" && !subnetID.MatchString(v) {
		bad("replica.subnet", "%q is not a subnet ID (subnet-…)", v)
	}
	switch c.Replica.Retire {
	case "stop", "terminate":
	default:
		bad("replica.retire", "%q must be stop (the old replica is stopped and kept) or terminate", c.Replica.Retire)
	}
	if d := c.Replica.MaxAge.D(); d < 0 {
		bad("replica.max_age", "%s is negative (0: no age limit)", d)
	}
	if d := c.Replica.ImageTimeout.D(); d < time.Minute || d > 24*time.Hour {
		bad("replica.image_timeout", "%s is outside 1m..24h", d)
	}
	if m := c.Replica.MaxLag.D(); m < 0 || m > time.Hour {
		bad("replica.max_lag", "must be between 0 and 1h (how many seconds behind still count as in sync), not %s", m)
	}
	if c.Failover.RequireInSync && strings.TrimSpace(c.Replica.ReplicationCheckCommand) == "" {
		bad("failover.require_in_sync", "needs replica.replication_check_command: without it the replica's lag is unknown and every failover would need --force-stale")
	}
	switch c.Backup.Method {
	case "ebs", "tarball":
	default:
		bad("backup.method", "%q must be \"ebs\" or \"tarball\"", c.Backup.Method)
	}
	if c.Backup.Bucket != "" && !bucketRE.MatchString(c.Backup.Bucket) {
		bad("backup.bucket", "%q is not a valid S3 bucket name", c.Backup.Bucket)
	}
	if c.Backup.Method == "tarball" && c.Backup.Bucket == "" {
		bad("backup.bucket", "is required when backup.method is tarball")
	}
	checkCron := func(key, spec string) {
		if spec == "" {
			return
		}
		if _, err := CronParser.Parse(spec); err != nil {
			bad(key, "%q is not a cron schedule: %v", spec, err)
		}
	}
	checkCron("backup.schedule", c.Backup.Schedule)
	checkCron("report.schedule", c.Report.Schedule)
	checkCron("drill.schedule", c.Drill.Schedule)
	if c.Drill.Schedule != "" && c.Slack.ReportChannel == "" {
		bad("slack.report_channel", "is required when drill.schedule is set")
	}
	if v := c.Drill.SubnetID; v != "" && !strings.HasPrefix(v, "subnet-") {
		bad("drill.subnet_id", "%q is not a subnet ID", v)
	}
	if v := c.Drill.SecurityGroupID; v != "" && !strings.HasPrefix(v, "sg-") {
		bad("drill.security_group_id", "%q is not a security group ID", v)
	}
	if v := c.Drill.InstanceType; v != "" && !instanceType.MatchString(v) {
		bad("drill.instance_type", "%q is not an EC2 instance type", v)
	}
	if u := c.Drill.HealthURL; u != "" {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") || !strings.Contains(u, "{ip}") {
			bad("drill.health_url", "%q must be an http(s) URL with {ip} (the drill instance's address); without it the probe would reach production", u)
		} else if _, err := url.Parse(strings.ReplaceAll(u, "{ip}", "10.0.0.1")); err != nil {
			bad("drill.health_url", "%q is not a URL: %v", u, err)
		}
	}
	if d := c.Drill.Timeout.D(); d < time.Minute || d > 12*time.Hour {
		bad("drill.timeout", "%s is outside 1m..12h", d)
	}
	r := c.Backup.Retention
	for _, kv := range []struct {
		key string
		n   int
	}{{"backup.retention.keep_last", r.KeepLast}, {"backup.retention.keep_daily", r.KeepDaily}, {"backup.retention.keep_weekly", r.KeepWeekly}} {
		if kv.n < 0 {
			bad(kv.key, "%d must not be negative", kv.n)
		}
	}
	if c.Backup.RPO.D() <= 0 {
		bad("backup.rpo", "must be positive (e.g. \"24h\")")
	}
	if c.Report.Schedule != "" && c.Slack.ReportChannel == "" {
		bad("slack.report_channel", "is required when report.schedule is set")
	} else if c.Backup.Schedule != "" && c.Slack.ReportChannel == "" {
		bad("slack.report_channel", "is required when backup.schedule is set: scheduled backups report there, and so do missed ones")
	}
	if v := c.Ops.RoleARN; v != "" && !roleARN.MatchString(v) {
		bad("ops.role_arn", "%q is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)", v)
	}
	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

// ValidateServe checks what serving Slack needs on top of Validate. With
// SLACK_SECRET_ARN the tokens are read from Secrets Manager when the bot
// starts (and checked by CheckSlackTokens then); here only the ARN's shape.
func (c *Config) ValidateServe() error {
	var p []Problem
	if arn := c.Secrets.SecretARN; arn != "" {
		if !secretARN.MatchString(arn) {
			p = append(p, Problem{"SLACK_SECRET_ARN", fmt.Sprintf("%q is not a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6 characters>)", arn)})
		}
		// One source of truth: a token in the environment next to the
		// secret would be ignored, and whoever set it would not know.
		for _, e := range []struct {
			name string
			s    Secret
		}{{"SLACK_BOT_TOKEN", c.Secrets.BotToken}, {"SLACK_SIGNING_SECRET", c.Secrets.SigningSecret}, {"SLACK_APP_TOKEN", c.Secrets.AppToken}} {
			if !e.s.Empty() {
				p = append(p, Problem{e.name, "is set as well as SLACK_SECRET_ARN: the tokens come from one place, unset one of them"})
			}
		}
	} else {
		p = append(p, CheckSlackTokens(c.Secrets, "")...)
	}
	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

// CheckSlackTokens is what serving needs of the Slack tokens, wherever
// they came from; from names the source in the problems ("" for the
// environment, whose variable names are the keys).
func CheckSlackTokens(s Secrets, from string) []Problem {
	key := func(env, field string) string {
		if from == "" {
			return env
		}
		return from + ": " + field
	}
	var p []Problem
	if s.BotToken.Empty() {
		p = append(p, Problem{key("SLACK_BOT_TOKEN", "bot_token"), "is not set: the bot cannot post replies"})
	}
	if s.AppToken.Empty() && s.SigningSecret.Empty() {
		socket := "set SLACK_APP_TOKEN"
		if from != "" {
			socket = "give an app_token"
		}
		p = append(p, Problem{key("SLACK_SIGNING_SECRET", "signing_secret"), "is not set: HTTP requests from Slack cannot be verified (or " + socket + " for Socket Mode)"})
	}
	if !s.AppToken.Empty() && !strings.HasPrefix(s.AppToken.Reveal(), "xapp-") {
		p = append(p, Problem{key("SLACK_APP_TOKEN", "app_token"), "must be an app-level token (xapp-…) with connections:write"})
	}
	return p
}

// secretARN is a Secrets Manager secret's full ARN: the name, then the
// hyphen and six characters Secrets Manager appends.
var secretARN = regexp.MustCompile(`^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$`)

// ValidateConsole checks what `bot console` needs on top of Validate. On
// a shared store the console joins the production replicas' live state
// (approvals included), so it acts as one configured person.
func (c *Config) ValidateConsole() error {
	if c.Store.Backend == "dynamodb" && c.Console.User == "" {
		return &ValidationError{Problems: []Problem{{"console.user", "is not set: with store.backend dynamodb the console works on the production state and acts as one person, this Slack user ID (e.g. your own, U0…); it cannot switch users with /as"}}}
	}
	return nil
}

// sameAddress: two listen addresses would bind the same port on a common
// interface (an empty host, 0.0.0.0 or :: is every interface).
func sameAddress(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}

// loopback: a listen address only this host can reach.
func loopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Warnings are legal but probably unintended settings; check-config prints them.
func (c *Config) Warnings() []Problem {
	var w []Problem
	if len(c.Slack.AllowedChannels) == 0 {
		w = append(w, Problem{"slack.allowed_channels", "is empty: the bot answers in every channel it is in"})
	}
	if len(c.Roles.Approvers) == 0 {
		w = append(w, Problem{"roles.approvers", "is empty: no destructive command (restore, failover, rotate, secret) can ever be approved"})
	} else if len(c.Roles.Approvers) == 1 && len(c.Roles.Operators) == 1 && c.Roles.Approvers[0] == c.Roles.Operators[0] {
		w = append(w, Problem{"roles.approvers", "the only approver is the only operator: nobody can approve their requests"})
	}
	if len(c.Roles.Operators) == 0 {
		w = append(w, Problem{"roles.operators", "is empty: nobody can back up, restore or fail over"})
	}
	if c.Drill.Schedule != "" && (c.Drill.SubnetID == "" || c.Drill.SecurityGroupID == "") {
		w = append(w, Problem{"drill.schedule", "is set, but drills need drill.subnet_id and drill.security_group_id: every scheduled drill will fail and say so"})
	}
	if c.Replica.NameTag == "" {
		w = append(w, Problem{"replica.name_tag", "is empty: failover needs --to <instance-id>"})
	}
	if m := c.Metrics.Listen; m != "" && !loopback(m) && c.Secrets.MetricsToken.Empty() {
		w = append(w, Problem{"metrics.listen", fmt.Sprintf("%q can be reached from other hosts and BOT_METRICS_TOKEN is not set: whoever reaches it reads command counts and AWS error codes", m)})
	}
	if err := c.ValidateConsole(); err != nil {
		w = append(w, Problem{"console.user", "is not set: `bot console` refuses to start on the shared store (store.backend dynamodb) without it"})
	}
	return w
}

// commandOK: the text parses as a /circleci command.
func commandOK(text string) bool {
	_, err := commands.Parse(text)
	return err == nil
}
