// Package commands is the grammar of the bot's slash command. It turns the
// text a user typed into a typed Command, or into a UsageError that says
// what to type instead, before anything runs. It does no I/O, so every
// transport (Slack, console, buttons) shares one parser and it can be fuzzed.
package commands

import (
	"slices"
	"strconv"
	"strings"
)

// Name identifies a command by its command words, as typed.
type Name string

const (
	Help           Name = "help"
	Status         Name = "status"
	BackupNow      Name = "backup now"
	BackupList     Name = "backup list"
	BackupStatus   Name = "backup status"
	BackupPrune    Name = "backup prune"
	Restore        Name = "restore"
	Failover       Name = "failover"
	Reboot         Name = "reboot"
	Resize         Name = "resize"
	ReplicaBuild   Name = "replica build"
	ReplicaRefresh Name = "replica refresh"
	BuildersStatus Name = "builders status"
	BuildersRotate Name = "builders rotate"
	Approve        Name = "approve"
	Deny           Name = "deny"
	Cancel         Name = "cancel"
	Resume         Name = "resume"
	History        Name = "history"
	ReportNow      Name = "report now"
	DrillNow       Name = "drill now"
	Secret         Name = "secret"
	Doctor         Name = "doctor"
)

const (
	// DefaultSlashCommand stands in where the caller has no configured name.
	DefaultSlashCommand = "/circleci"
	// DefaultHistoryLimit is what "history" without N shows.
	DefaultHistoryLimit = 20
	// MaxHistoryLimit keeps one history reply within a Slack message.
	MaxHistoryLimit = 200
	// MaxInputBytes bounds the work done for one message; no valid command
	// comes near it.
	MaxInputBytes = 4000
)

// Class says who may run a command; authorization lives elsewhere and maps
// roles to classes.
type Class int

const (
	ClassRead        Class = iota // viewers and up: help, status, backup list, backup status, builders status, history, doctor
	ClassOperate                  // operators, runs without approval: backup now, report now, drill now, cancel, resume
	ClassDestructive              // an operator requests, a second person approves: restore, failover, reboot, resize, replica build/refresh, builders rotate, backup prune, secret
	ClassDecide                   // approvers: approve, deny
)

func (c Class) String() string {
	switch c {
	case ClassRead:
		return "read"
	case ClassOperate:
		return "operate"
	case ClassDestructive:
		return "destructive"
	case ClassDecide:
		return "decide"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Spec describes one command for help, usage errors and authorization.
type Spec struct {
	Name    Name
	Usage   string // without the slash command, e.g. "restore <snapshot-id|latest|s3://bucket/key> [--dry-run]"
	Summary string // one line, plain English
	Class   Class
}

// specs is in help order, grouped by class so that help reads top to bottom
// from harmless to dangerous.
var specs = []Spec{
	{Help, "help [command]", "List the commands you may run, or explain one.", ClassRead},
	{Status, "status", "Health of the Services box, the replica, the builders and the newest backup.", ClassRead},
	{BackupList, "backup list", "Restore points (EBS snapshots and S3 tarballs), newest first.", ClassRead},
	{BackupStatus, "backup status <backup-id|snapshot-id|s3://bucket/key>", "State and progress of one backup.", ClassRead},
	{BuildersStatus, "builders status", "The builder fleet: instances, health, and the Services box address they use.", ClassRead},
	{History, "history [N]", "The last N commands and operations (default 20): who, what, and how it ended.", ClassRead},
	{Doctor, "doctor", "Would a recovery work right now? Read-only checks and dry runs of every operation.", ClassRead},

	{BackupNow, "backup now [ebs|tarball]", "Back up the Services box now (default: the configured method).", ClassOperate},
	{ReportNow, "report now", "Post the daily backup report (restore points, RPO, drills, chart) here, now.", ClassOperate},
	{DrillNow, "drill now", "Test-restore the newest backup on a throwaway instance, then clean up.", ClassOperate},
	{Cancel, "cancel <op-id>", "Stop a running operation at the next safe point between steps.", ClassOperate},
	{Resume, "resume <op-id>", "Continue an operation that stopped part-way, from its first unfinished step.", ClassOperate},

	{Restore, "restore <snapshot-id|latest|s3://bucket/key> [--rebuild] [--dry-run]", "Restore the Services box from a backup: in place when its instance is there, else onto a new one (--rebuild: always a new one).", ClassDestructive},
	{Failover, "failover [--to <instance-id>] [--force-unknown] [--force-stale] [--dry-run]", "Fence the Services box and promote the replica.", ClassDestructive},
	{Reboot, "reboot [--dry-run]", "Reboot the Services box and wait until it is healthy.", ClassDestructive},
	{Resize, "resize <instance-type> [--dry-run]", "Stop the Services box, change its instance type, start it.", ClassDestructive},
	{ReplicaBuild, "replica build [--subnet <subnet-id>] [--dry-run]", "Make an image of the Services box and launch the replica from it.", ClassDestructive},
	{ReplicaRefresh, "replica refresh [--dry-run]", "Build a new replica from the Services box, then retire the old one.", ClassDestructive},
	{BuildersRotate, "builders rotate [--dry-run]", "Replace every builder so all reconnect to the current Services box.", ClassDestructive},
	{BackupPrune, "backup prune [--dry-run]", "Delete backups past the retention policy, never the newest good one.", ClassDestructive},
	{Secret, "secret [--dry-run]", "Give new builders the Services box's CIRCLE_SECRET_PASSPHRASE.", ClassDestructive},

	{Approve, "approve <request-id>", "Approve someone else's pending request, which then runs.", ClassDecide},
	{Deny, "deny <request-id>", "Refuse a pending request; nothing runs.", ClassDecide},
}

var specByName = func() map[Name]Spec {
	m := make(map[Name]Spec, len(specs))
	for _, s := range specs {
		m[s.Name] = s
	}
	return m
}()

// Specs returns every command in help order. The slice is a copy.
func Specs() []Spec { return slices.Clone(specs) }

// SpecOf looks a command up by name.
func SpecOf(n Name) (Spec, bool) {
	s, ok := specByName[n]
	return s, ok
}

// BackupMethod is how "backup now" backs up.
type BackupMethod string

const (
	MethodDefault BackupMethod = "" // use the configured default
	MethodEBS     BackupMethod = "ebs"
	MethodTarball BackupMethod = "tarball"
)

// SourceKind says which field of a RestoreSource is set.
type SourceKind int

const (
	SourceNone     SourceKind = iota
	SourceSnapshot            // restore snap-… or bk-… (an EBS restore point)
	SourceLatest              // restore latest
	SourceS3                  // restore s3://bucket/key
)

// RestoreSource is what a restore restores from.
type RestoreSource struct {
	Kind       SourceKind
	SnapshotID string // SourceSnapshot: snap-…, or the bot's restore point ID bk-…
	Bucket     string // SourceS3
	Key        string // SourceS3
}

func (s RestoreSource) String() string {
	switch s.Kind {
	case SourceSnapshot:
		return s.SnapshotID
	case SourceLatest:
		return "latest"
	case SourceS3:
		return "s3://" + s.Bucket + "/" + s.Key
	}
	return ""
}

// Command is one parsed command. Fields a command does not take are zero,
// so two commands that mean the same thing compare equal.
type Command struct {
	Name         Name
	DryRun       bool          // --dry-run, only on ClassDestructive commands
	Method       BackupMethod  // backup now [ebs|tarball]
	ID           string        // backup status <snapshot-id|s3-uri>; approve/deny <request-id>; cancel/resume <op-id>
	Source       RestoreSource // restore
	Target       string        // failover --to <instance-id> (empty: the configured replica)
	ForceUnknown bool          // failover --force-unknown
	ForceStale   bool          // failover --force-stale
	Subnet       string        // replica build --subnet <subnet-id>
	Rebuild      bool          // restore --rebuild: a new instance even when the box could be restored in place
	InstanceType string        // resize <instance-type>, lowercased
	Limit        int           // history [N] (DefaultHistoryLimit when not given)
	Topic        Name          // help <command> (empty: all)
}

// Spec returns the command's Spec; the zero Spec if the name is unknown.
func (c Command) Spec() Spec { return specByName[c.Name] }

// Text renders the command in canonical form, e.g.
// "restore snap-0123abcd --dry-run". Parse(c.Text()) gives back c for any c
// that Parse returned, which is what lets a button or an audit record carry
// the command as text.
func (c Command) Text() string {
	parts := []string{string(c.Name)}
	add := func(s string) {
		if s != "" {
			parts = append(parts, s)
		}
	}
	switch c.Name {
	case Help:
		add(string(c.Topic))
	case BackupNow:
		add(string(c.Method))
	case BackupStatus, Approve, Deny, Cancel, Resume:
		add(c.ID)
	case Restore:
		add(c.Source.String())
		if c.Rebuild {
			add("--rebuild")
		}
	case Resize:
		add(c.InstanceType)
	case Failover:
		if c.Target != "" {
			add("--to " + c.Target)
		}
		if c.ForceUnknown {
			add("--force-unknown")
		}
		if c.ForceStale {
			add("--force-stale")
		}
	case ReplicaBuild:
		if c.Subnet != "" {
			add("--subnet " + c.Subnet)
		}
	case History:
		if c.Limit != 0 && c.Limit != DefaultHistoryLimit {
			add(strconv.Itoa(c.Limit))
		}
	}
	if c.DryRun {
		add("--dry-run")
	}
	return strings.Join(parts, " ")
}
