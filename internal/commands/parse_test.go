package commands

import (
	"errors"
	"strings"
	"testing"
)

const (
	snap8  = "snap-0123abcd"
	snap17 = "snap-0123456789abcdef0"
	inst17 = "i-0123456789abcdef0"
)

var validCases = []struct {
	in   string
	want Command
}{
	// help
	{"", Command{Name: Help}},
	{"   \t\n ", Command{Name: Help}},
	{"help", Command{Name: Help}},
	{"HELP", Command{Name: Help}},
	{"/circleci", Command{Name: Help}},
	{"/circleci help", Command{Name: Help}},
	{"help restore", Command{Name: Help, Topic: Restore}},
	{"help Backup   NOW", Command{Name: Help, Topic: BackupNow}},
	{"help help", Command{Name: Help, Topic: Help}},
	{"--help", Command{Name: Help}},
	{"restore --help", Command{Name: Help, Topic: Restore}},
	{"restore snap-bogus —help", Command{Name: Help, Topic: Restore}},
	{"builders rotate --help", Command{Name: Help, Topic: BuildersRotate}},

	// status
	{"status", Command{Name: Status}},
	{"doctor", Command{Name: Doctor}},
	{"  Status  ", Command{Name: Status}},
	{"/circleci status", Command{Name: Status}},
	{"/ops status", Command{Name: Status}},
	{"\u200bstatus\ufeff", Command{Name: Status}},
	{"status\u00a0", Command{Name: Status}},

	// backup now
	{"backup now", Command{Name: BackupNow}},
	{"Backup NOW", Command{Name: BackupNow}},
	{"backup\t\tnow\n", Command{Name: BackupNow}},
	{"backup now ebs", Command{Name: BackupNow, Method: MethodEBS}},
	{"backup now TARBALL", Command{Name: BackupNow, Method: MethodTarball}},
	{"/circleci   backup  now  tarball", Command{Name: BackupNow, Method: MethodTarball}},

	// backup list / status / prune
	{"backup list", Command{Name: BackupList}},
	{"BACKUP LIST", Command{Name: BackupList}},
	{"backup status " + snap8, Command{Name: BackupStatus, ID: snap8}},
	{"backup status SNAP-0123ABCD", Command{Name: BackupStatus, ID: snap8}},
	{"backup status " + snap17, Command{Name: BackupStatus, ID: snap17}},
	{"backup status s3://my-backups/circleci/2026-11-28.tar.gz", Command{Name: BackupStatus, ID: "s3://my-backups/circleci/2026-11-28.tar.gz"}},
	{"backup status <s3://my-backups/Daily/A.tar|s3://my-backups/Daily/A.tar>", Command{Name: BackupStatus, ID: "s3://my-backups/Daily/A.tar"}},
	{"backup status &lt;snap-0123abcd&gt;", Command{Name: BackupStatus, ID: snap8}},
	{"backup prune", Command{Name: BackupPrune}},
	{"backup prune --dry-run", Command{Name: BackupPrune, DryRun: true}},
	{"backup prune —dry-run", Command{Name: BackupPrune, DryRun: true}},
	{"backup --dry-run prune", Command{Name: BackupPrune, DryRun: true}},

	// restore
	{"restore " + snap8, Command{Name: Restore, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore " + strings.ToUpper(snap17), Command{Name: Restore, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap17}}},
	{"restore latest", Command{Name: Restore, Source: RestoreSource{Kind: SourceLatest}}},
	{"restore bk-20261128-031500-7f3a", Command{Name: Restore, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: "bk-20261128-031500-7f3a"}}},
	{"Restore LATEST --dry-run", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceLatest}}},
	{"restore " + snap8 + " --dry-run", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore " + snap8 + " —dry-run", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore " + snap8 + " –dry-run", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore " + snap8 + " --DRY-RUN", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore --dry-run " + snap8, Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"/circleci restore " + snap8, Command{Name: Restore, Source: RestoreSource{Kind: SourceSnapshot, SnapshotID: snap8}}},
	{"restore s3://my-backups/CircleCI/backup-2026.tar.gz", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "my-backups", Key: "CircleCI/backup-2026.tar.gz"}}},
	{"restore S3://my-backups/k", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "my-backups", Key: "k"}}},
	{"restore <s3://my-backups/a/b.tgz>", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "my-backups", Key: "a/b.tgz"}}},
	{"restore <s3://my-backups/a/b.tgz|my backup> —dry-run", Command{Name: Restore, DryRun: true, Source: RestoreSource{Kind: SourceS3, Bucket: "my-backups", Key: "a/b.tgz"}}},
	{"restore s3://b.example.com/k/ü.tar", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "b.example.com", Key: "k/ü.tar"}}},
	{"restore s3://<http://backups.example.com/k.tgz|backups.example.com/k.tgz>", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "backups.example.com", Key: "k.tgz"}}},
	{"restore <s3://bkt/real-key|s3://bkt/shown-key>", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "bkt", Key: "real-key"}}},
	{"restore s3://bkt/a|b", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "bkt", Key: "a|b"}}},
	{"restore s3://bkt/dir/", Command{Name: Restore, Source: RestoreSource{Kind: SourceS3, Bucket: "bkt", Key: "dir/"}}},

	// failover
	{"failover", Command{Name: Failover}},
	{"failover --dry-run", Command{Name: Failover, DryRun: true}},
	{"failover --to " + inst17, Command{Name: Failover, Target: inst17}},
	{"failover --to=" + inst17, Command{Name: Failover, Target: inst17}},
	{"failover —to I-0123ABCD", Command{Name: Failover, Target: "i-0123abcd"}},
	{"failover --force-unknown", Command{Name: Failover, ForceUnknown: true}},
	{"FAILOVER —force-unknown –to " + inst17 + " —dry-run", Command{Name: Failover, Target: inst17, ForceUnknown: true, DryRun: true}},
	{"failover --dry-run --to=" + inst17 + " --force-unknown", Command{Name: Failover, Target: inst17, ForceUnknown: true, DryRun: true}},

	// reboot and resize
	{"reboot", Command{Name: Reboot}},
	{"REBOOT --dry-run", Command{Name: Reboot, DryRun: true}},
	{"reboot —dry-run", Command{Name: Reboot, DryRun: true}},
	{"resize m5.4xlarge", Command{Name: Resize, InstanceType: "m5.4xlarge"}},
	{"replica build", Command{Name: ReplicaBuild}},
	{"replica build --subnet subnet-0123456789ABCDEF0 --dry-run", Command{Name: ReplicaBuild, Subnet: "subnet-0123456789abcdef0", DryRun: true}},
	{"replica build --subnet=subnet-01234567", Command{Name: ReplicaBuild, Subnet: "subnet-01234567"}},
	{"replica refresh", Command{Name: ReplicaRefresh}},
	{"failover --force-stale", Command{Name: Failover, ForceStale: true}},
	{"Resize M5.4XLARGE", Command{Name: Resize, InstanceType: "m5.4xlarge"}},
	{"resize --dry-run c6gn.16xlarge", Command{Name: Resize, InstanceType: "c6gn.16xlarge", DryRun: true}},
	{"resize m7i-flex.large —dry-run", Command{Name: Resize, InstanceType: "m7i-flex.large", DryRun: true}},
	{"resize u-6tb1.metal", Command{Name: Resize, InstanceType: "u-6tb1.metal"}},
	{"resize r8g.metal-24xl", Command{Name: Resize, InstanceType: "r8g.metal-24xl"}},
	// The parser takes any plausible family.size; AWS decides whether it exists.
	{"resize zz9.bogus", Command{Name: Resize, InstanceType: "zz9.bogus"}},

	// builders
	{"builders status", Command{Name: BuildersStatus}},
	{"Builders Status", Command{Name: BuildersStatus}},
	{"builders rotate", Command{Name: BuildersRotate}},
	{"builders rotate --dry-run", Command{Name: BuildersRotate, DryRun: true}},

	// approvals and operations
	{"approve req-7f3a9c", Command{Name: Approve, ID: "req-7f3a9c"}},
	{"APPROVE REQ-7F3A9C", Command{Name: Approve, ID: "req-7f3a9c"}},
	{"/circleci approve req-7f3a9c", Command{Name: Approve, ID: "req-7f3a9c"}},
	{"deny req-7f3a9c", Command{Name: Deny, ID: "req-7f3a9c"}},
	{"cancel op-20261128-031500-7f3a", Command{Name: Cancel, ID: "op-20261128-031500-7f3a"}},
	{"resume  op-20261128-031500-7f3a ", Command{Name: Resume, ID: "op-20261128-031500-7f3a"}},
	{"approve abc", Command{Name: Approve, ID: "abc"}},
	{"approve " + strings.Repeat("a", 64), Command{Name: Approve, ID: strings.Repeat("a", 64)}},

	// history
	{"history", Command{Name: History, Limit: 20}},
	{"history 1", Command{Name: History, Limit: 1}},
	{"history 200", Command{Name: History, Limit: 200}},
	{"history 20", Command{Name: History, Limit: 20}},
	{"history 007", Command{Name: History, Limit: 7}},
	{"history 0000000000000000000050", Command{Name: History, Limit: 50}},

	// the rest
	{"report now", Command{Name: ReportNow}},
	{"Report Now", Command{Name: ReportNow}},
	{"drill now", Command{Name: DrillNow}},
	{"secret", Command{Name: Secret}},
	{"secret --dry-run", Command{Name: Secret, DryRun: true}},
	{"secret -dry-run", Command{Name: Secret, DryRun: true}},
}

var invalidCases = []struct {
	in      string
	problem string
}{
	// unknown and incomplete commands
	{"xyz", `unknown command "xyz"`},
	{"bakcup now", "Did you mean `backup`?"},
	{"stauts", "Did you mean `status`?"},
	{"backupnow", "Did you mean `backup now`?"},
	{"backup-now", "Did you mean `backup now`?"},
	{"restor latest", "Did you mean `restore`?"},
	{"x", `unknown command "x"`},
	{"--dry-run restore", "restore needs a source"}, // flags may come first
	{"backup", "backup needs a subcommand: list, status, now or prune"},
	{"backup foo", `"foo" is not a backup subcommand`},
	{"backup nwo", "Did you mean `now`?"},
	{"backup tsatus", "Did you mean `status`?"},
	{"backup lsit", "Did you mean `list`?"},
	{"builders", "builders needs a subcommand: status or rotate"},
	{"builders restart", `"restart" is not a builders subcommand`},
	{"report", "report needs a subcommand: now"},
	{"report later", `"later" is not a report subcommand`},
	{"drill", "drill needs a subcommand: now"},
	{"help xyz", `unknown command "xyz"`},
	{"help backup", "backup needs a subcommand"},
	{"help restore now", `unexpected extra argument "now"`},
	{strings.Repeat("a", MaxInputBytes+1), "a command is at most 4000"},
	{"status \xff", "not valid UTF-8"},

	// extra arguments
	{"status now", `status takes no arguments, but got "now"`},
	{"backup list all", `backup list takes no arguments, but got "all"`},
	{"builders status x", `takes no arguments, but got "x"`},
	{"report now please", `but got "please"`},
	{"secret foo", `but got "foo"`},
	{"backup now ebs tarball", `unexpected extra argument "tarball"`},
	{"history 5 6", `unexpected extra argument "6"`},
	{"approve req-1234 req-5678", `unexpected extra argument "req-5678"`},
	{"failover " + inst17, "write --to " + inst17},
	{"failover now", `unexpected extra argument "now"`},

	// flags
	{"status --dry-run", "--dry-run only applies to commands that change things"},
	{"backup now --dry-run", "--dry-run only applies to commands that change things"},
	{"approve req-7f3a9c —dry-run", "--dry-run only applies"},
	{"restore latest --bogus", `unknown flag "--bogus"`},
	{"restore latest --dryrun", "Did you mean `--dry-run`?"},
	{"restore latest --dry-run --dry-run", "--dry-run is given twice"},
	{"restore latest --dry-run —dry-run", "--dry-run is given twice"},
	{"restore latest --dry-run=yes", "--dry-run takes no value"},
	{"restore latest --to " + inst17, "--to only applies to failover"},
	{"restore latest --force-unknown", "--force-unknown only applies to failover"},
	{"restore latest --", `unknown flag "--"`},
	{"restore latest —", `unknown flag "—"`},
	{"restore latest —Bogus=1", `unknown flag "—Bogus"`},
	{"failover --to", "--to needs an instance ID"},
	{"failover --to=", "--to needs an instance ID"},
	{"failover --to --dry-run", "--to needs an instance ID"},
	{"failover --to " + snap8, `"snap-0123abcd" is a snapshot ID; --to takes an instance ID`},
	{"failover --to ami-0123abcd", "is an AMI ID; --to takes an instance ID"},
	{"failover --to i-xyz", `"i-xyz" is not an instance ID`},
	{"failover --to i-0123abc", "is not an instance ID"},
	{"failover --to " + inst17 + " --to " + inst17, "--to is given twice"},
	{"failover --force-unknown --force-unknown", "--force-unknown is given twice"},
	{"failover --force-unknown=true", "--force-unknown takes no value"},

	// reboot and resize
	{"reboot now", `reboot takes no arguments, but got "now"`},
	{"reboot --to " + inst17, "--to only applies to failover"},
	{"resize", "resize needs an instance type, e.g. resize m5.2xlarge"},
	{"replica build --subnet", "--subnet needs a subnet ID"},
	{"replica build --subnet sg-01234567", `"sg-01234567" is not a subnet ID`},
	{"replica build subnet-01234567", `replica build takes no arguments`},
	{"replica refresh --subnet subnet-01234567", "--subnet only applies to replica build"},
	{"replica rebuild", `"rebuild" is not a replica subcommand (expected build or refresh)`},
	{"reboot --force-stale", "--force-stale only applies to failover"},
	{"resize --dry-run", "resize needs an instance type"},
	{"resize m5", `"m5" is not an instance type (expected family.size, e.g. m5.2xlarge)`},
	{"resize m5.", `"m5." is not an instance type`},
	{"resize .xlarge", `".xlarge" is not an instance type`},
	{"resize m5.2xlarge.big", "is not an instance type"},
	{"resize m5_2xlarge", "is not an instance type"},
	{"resize m5.2xlarge m5.4xlarge", `unexpected extra argument "m5.4xlarge"; resize takes one instance type`},
	{"resize " + inst17, `"i-0123456789abcdef0" is an instance ID; resize takes an instance type`},
	{"resize m５.xlarge", "is not an instance type"},
	{"resize m5.xlarge`", "is not an instance type"},
	{"resize " + strings.Repeat("m", 30) + ".xlarge", "is not an instance type"},
	{"resize m5.xlarge --force-unknown", "--force-unknown only applies to failover"},

	// backup now
	{"backup now rsync", `"rsync" is not a backup method (expected ebs or tarball)`},
	{"backup now tarbal", "Did you mean `tarball`?"},

	// backup status
	{"backup status", "backup status needs a backup ID (bk-…), a snapshot ID or s3://bucket/key"},
	{"backup status latest", `"latest" is not a snapshot ID, a backup ID (bk-…) or s3://bucket/key`},
	{"backup status " + inst17, "is an instance ID; backup status takes a snapshot ID"},
	{"backup status s3://bucket", "has no object key"},

	// restore
	{"restore", "restore needs a source"},
	{"restore snap-xyz", `"snap-xyz" is not a snapshot ID (expected snap- followed by 8 or 17 hex digits)`},
	{"restore snap-0123abc", "is not a snapshot ID"},
	{"restore snap-0123abcde", "is not a snapshot ID"},
	{"restore " + inst17, `"i-0123456789abcdef0" is an instance ID; restore takes a snapshot ID`},
	{"restore ami-0123abcd", "is an AMI ID; restore takes a snapshot ID"},
	{"restore vol-0123abcd", "is a volume ID; restore takes a snapshot ID"},
	{"restore yesterday", `"yesterday" is not a snapshot ID, a backup ID (bk-…), latest, or s3://bucket/key`},
	{"restore latest " + snap8, `unexpected extra argument "snap-0123abcd"; restore takes exactly one source`},
	{"restore s3://my-backups/CircleCI/Backup 2026.tar.gz", `unexpected extra argument "2026.tar.gz"`},
	{"restore s3://my-backups", "has no object key"},
	{"restore s3://my-backups/", "has no object key"},
	{"restore s3://ab/k", "3 to 63 characters"},
	{"restore s3://" + strings.Repeat("b", 64) + "/k", "3 to 63 characters"},
	{"restore s3://My-Backups/k", "bucket names are lowercase"},
	{"restore s3://my_backups/k", "only lowercase letters, digits, dots and dashes"},
	{"restore s3://-backups/k", "start and end with a letter or digit"},
	{"restore s3://backups./k", "start and end with a letter or digit"},
	{"restore s3://my..backups/k", `contains ".."`},
	{"restore s3://192.168.5.4/k", "it is an IP address"},
	{"restore s3://bkt/" + strings.Repeat("k", 1025), "S3 allows at most 1024"},
	{"restore s3://bkt/a\x01b", "contains a control character"},
	{"restore s3://bkt/a&amp;b", "contains &, <, > or a backtick"},
	{"restore s3://bkt/a&b", "contains &, <, > or a backtick"},
	{"restore s3://bkt/a`b", "contains &, <, > or a backtick"},
	{"restore s3://bkt/a&lt;b", "contains &, <, > or a backtick"},
	{"restore <s3://bkt/a", `"‹s3://bkt/a" is not a snapshot ID`},

	// our IDs
	{"approve", "approve needs a request ID"},
	{"deny", "deny needs a request ID"},
	{"cancel", "cancel needs an operation ID"},
	{"resume", "resume needs an operation ID"},
	{"approve ab", `"ab" is not a request ID`},
	{"approve -req", `unknown flag "-req"`},
	{"approve req_7f3a9c", `"req_7f3a9c" is not a request ID`},
	{"approve " + strings.Repeat("a", 65), "is not a request ID"},
	{"cancel op/1", `"op/1" is not an operation ID`},
	{"resume ö-123", "is not an operation ID"},

	// history
	{"history 0", `history shows 1 to 200 entries; "0" is out of range`},
	{"history 201", `"201" is out of range`},
	{"history 99999999999999999999999", "is out of range"},
	{"history ten", `"ten" is not a number`},
	{"history -5", `unknown flag "-5"`},
	{"history 1.5", "is not a number"},
}

func TestParseValid(t *testing.T) {
	for _, tc := range validCases {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): unexpected error: %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range invalidCases {
		got, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error containing %q", tc.in, got, tc.problem)
			continue
		}
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("Parse(%q): error %T is not a *UsageError", tc.in, err)
			continue
		}
		if !strings.Contains(ue.Problem, tc.problem) {
			t.Errorf("Parse(%q).Problem = %q, want it to contain %q", tc.in, ue.Problem, tc.problem)
		}
		if ue.Usage == "" || strings.Contains(ue.Usage, DefaultSlashCommand) {
			t.Errorf("Parse(%q).Usage = %q: want the form(s) without the slash command", tc.in, ue.Usage)
		}
		if got != (Command{}) {
			t.Errorf("Parse(%q) returned %+v alongside an error", tc.in, got)
		}
	}
}

// TestRoundTrip: Text is what buttons and audit records carry, so it must
// parse back to the very same command.
func TestRoundTrip(t *testing.T) {
	for _, tc := range validCases {
		c, err := Parse(tc.in)
		if err != nil {
			continue // reported by TestParseValid
		}
		text := c.Text()
		back, err := Parse(text)
		if err != nil {
			t.Errorf("Parse(%q).Text() = %q, which does not parse: %v", tc.in, text, err)
			continue
		}
		if back != c {
			t.Errorf("round trip of %q via %q\n got %+v\nwant %+v", tc.in, text, back, c)
		}
	}
}

func TestTextCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"  Restore   SNAP-0123ABCD —dry-run": "restore snap-0123abcd --dry-run",
		"restore <s3://bkt/k|label>":         "restore s3://bkt/k",
		"failover –dry-run –to=I-0123ABCD":   "failover --to i-0123abcd --dry-run",
		"history 20":                         "history",
		"history 050":                        "history 50",
		"help BACKUP now":                    "help backup now",
		"backup now Tarball":                 "backup now tarball",
		"/circleci status":                   "status",
		"approve REQ-1":                      "approve req-1",
		"—DRY-RUN resize M5.XLARGE":          "resize m5.xlarge --dry-run",
	} {
		c, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if got := c.Text(); got != want {
			t.Errorf("Parse(%q).Text() = %q, want %q", in, got, want)
		}
	}
}

func TestEveryCommandHasValidCase(t *testing.T) {
	seen := map[Name]bool{}
	for _, tc := range validCases {
		seen[tc.want.Name] = true
	}
	for _, s := range Specs() {
		if !seen[s.Name] {
			t.Errorf("no valid table case for %q", s.Name)
		}
	}
}

func TestProblemQuotesSafely(t *testing.T) {
	long := strings.Repeat("é", 100)
	for _, in := range []string{
		"restore " + long,
		"`rm` -rf",
		"restore snap-`x`",
		"restore &lt;!channel",
		"restore \u202eevil",
		"approve a\x1bb",
		"history <@U123>",
		"failover --to " + long,
		"xyz" + long,
	} {
		_, err := Parse(in)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Fatalf("Parse(%q): want a UsageError, got %v", in, err)
		}
		p := ue.Problem
		if strings.Contains(p, "é"+strings.Repeat("é", maxQuotedRunes)) {
			t.Errorf("Parse(%q): quoted token not truncated: %q", in, p)
		}
		if strings.ContainsAny(p, "<>\x1b\u202e") || (strings.Contains(p, "`") && !strings.Contains(p, "Did you mean")) {
			t.Errorf("Parse(%q): unsafe problem %q", in, p)
		}
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"abc":                        `"abc"`,
		"a`b<c>d\x00e\u200bf":        `"ab‹c›def"`,
		strings.Repeat("x", 40):      `"` + strings.Repeat("x", 40) + `"`,
		strings.Repeat("x", 41):      `"` + strings.Repeat("x", 40) + `…"`,
		"\xff":                       `"` + "\uFFFD" + `"`,
		strings.Repeat("ü", 50) + "": `"` + strings.Repeat("ü", 40) + `…"`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUsageErrorRender(t *testing.T) {
	one := &UsageError{Problem: "bad", Usage: "restore <snapshot-id|latest|s3://bucket/key> [--dry-run]"}
	// Slack's mrkdwn reads <…|…> as a link even in code spans: Render escapes.
	if got, want := one.Render("/ops"), "bad\nUsage: `/ops restore &lt;snapshot-id|latest|s3://bucket/key&gt; [--dry-run]`"; got != want {
		t.Errorf("Render = %q, want %q", got, want)
	}
	if got, want := one.Error(), "bad\nUsage: `/circleci restore <snapshot-id|latest|s3://bucket/key> [--dry-run]`"; got != want {
		t.Errorf("Error = %q, want %q", got, want)
	}
	if got := one.Render(""); !strings.Contains(got, "`/circleci restore") {
		t.Errorf("Render(\"\") = %q, want the default slash command", got)
	}
	if got := one.Render("ops"); !strings.Contains(got, "`/ops restore") {
		t.Errorf("Render(\"ops\") = %q, want a leading slash added", got)
	}
	_, err := Parse("backup")
	var ue *UsageError
	if !errors.As(err, &ue) {
		t.Fatal(err)
	}
	got := ue.Render("/ops")
	for _, want := range []string{"\nUsage:\n", "`/ops backup now [ebs|tarball]`", "`/ops backup prune [--dry-run]`"} {
		if !strings.Contains(got, want) {
			t.Errorf("Render of a group error = %q, want it to contain %q", got, want)
		}
	}
}

func TestUnknownCommandListsCommands(t *testing.T) {
	_, err := Parse("frobnicate")
	var ue *UsageError
	if !errors.As(err, &ue) {
		t.Fatal(err)
	}
	if strings.Contains(ue.Problem, "Did you mean") {
		t.Errorf("no suggestion expected for a far-off word: %q", ue.Problem)
	}
	for _, in := range []string{"backup foo", "xyz", "drill later", "a", "ok", "restore latest --x"} {
		if _, err := Parse(in); err == nil || strings.Contains(err.Error(), "Did you mean") {
			t.Errorf("Parse(%q): want an error without a far-fetched suggestion, got %v", in, err)
		}
	}
	for _, w := range []string{"help", "status", "backup list|status|now|prune", "restore <", "failover [", "approve <request-id>", "history [N]", "secret"} {
		if !strings.Contains(ue.Usage, w) {
			t.Errorf("unknown-command usage lacks %q:\n%s", w, ue.Usage)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{
		{"", "", 0}, {"a", "", 1}, {"status", "status", 0}, {"stauts", "status", 1},
		{"bakcup", "backup", 1}, {"nwo", "now", 1}, {"kitten", "sitting", 3}, {"backupnow", "backup now", 1},
	} {
		if got := editDistance([]rune(tc.a), []rune(tc.b)); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}

func TestRestoreRebuildFlag(t *testing.T) {
	c, err := Parse("restore latest --rebuild")
	if err != nil || !c.Rebuild || c.Source.Kind != SourceLatest {
		t.Fatalf("restore latest --rebuild: %+v %v", c, err)
	}
	if back, err := Parse(c.Text()); err != nil || back != c {
		t.Errorf("round trip of %q: %+v %v", c.Text(), back, err)
	}
	for _, bad := range []string{"restore s3://b/k.tar --rebuild", "backup now --rebuild", "failover --rebuild"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
