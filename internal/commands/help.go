package commands

import "strings"

var classOrder = []Class{ClassRead, ClassOperate, ClassDestructive, ClassDecide}

var headings = map[Class]string{
	ClassRead:        "*Read-only*",
	ClassOperate:     "*Operate*",
	ClassDestructive: "*Needs a second person's approval*",
	ClassDecide:      "*Approve or deny*",
}

// who says which roles may run a class, in the words of the config keys
// (roles.viewers, roles.operators, roles.approvers).
var who = map[Class]string{
	ClassRead:        "Who: viewers, operators and approvers.",
	ClassOperate:     "Who: operators.",
	ClassDestructive: "Who: an operator asks; a different approver must approve the plan before anything runs.",
	ClassDecide:      "Who: approvers, and never for their own request.",
}

// details is the longer explanation behind "help <command>". "{cmd}"
// stands for the configured slash command. Every Spec has one (tested).
var details = map[Name]string{
	Help: "Without a command, lists the commands you may run here. With one, explains it, e.g. `{cmd} help restore`. " +
		"Adding --help to any command does the same.",
	Status: "Shows the Services box and the replica (instance state, private IP, availability zone), the builder fleet, " +
		"the newest backup and its age, and the builder group. Read-only and safe at any time.",
	BackupList: "Lists restore points, newest first: EBS snapshots (snap-…) and circleci-backup tarballs in S3 (s3://bucket/key). " +
		"Use an ID from here with `{cmd} restore` or `{cmd} backup status`.",
	BackupStatus: "Shows one backup: its state, progress, size and age. " +
		"An EBS snapshot can stay pending for hours, and the first snapshot of a volume is a full copy; a snapshot set is done when its last snapshot is.",
	BuildersStatus: "Shows the builder fleet: desired and running instances, their health, and the Services box address they were started with. " +
		"After a restore or failover, builders still pointing at the old address need `{cmd} builders rotate`.",
	Doctor: "Checks, read-only and through AWS dry runs, that a recovery would work right now: the Services box found exactly once, " +
		"the SSM agents of the box and the replica, the pre-flight of each operation (EBS and tarball backup, `restore latest`, failover, builder rotation: " +
		"every call tried without effect, so a missing IAM permission is named), the newest restore point against the RPO, and the bot's replicas. " +
		"One verdict per line, with a fix for each failure. Changes nothing.",
	History: "Shows the last N commands and operations (default 20, at most 200): who asked, who approved, what ran, and how it ended.",
	BackupNow: "Backs up the Services box now. `ebs` snapshots its data volumes; `tarball` runs circleci-backup on the box and uploads the archive to S3. " +
		"Without a method, the configured one is used. Progress is posted as the backup runs.",
	ReportNow: "Posts the backup and health report (newest backups, failed or missed scheduled backups, drill results) to the report channel now, " +
		"instead of waiting for its schedule.",
	DrillNow: "Checks that the newest backup really restores: builds a throwaway instance from it, checks it, then removes it. " +
		"The running Services box is not touched.",
	Cancel: "Stops a running operation at the next safe point between steps. Steps already done are not undone; " +
		"`{cmd} resume` continues it. The operation ID is in its progress message.",
	Resume: "Continues an operation that stopped part-way (cancelled, a failed step, or a bot restart) from its first unfinished step. " +
		"The operation ID is in its progress message.",
	Restore: "Builds a new Services box from a backup. A snapshot ID or `latest` restores EBS snapshots onto a new instance with the same private IP; " +
		"an s3:// URI restores a circleci-backup tarball with circleci-restore. The bot first posts a plan naming every resource it will touch. " +
		"`--dry-run` posts the plan and stops.",
	Failover: "Cold failover: makes sure the current Services box is stopped (fencing), moves its private IP to the replica and starts CircleCI there. " +
		"`--to` picks an instance other than the configured replica. If the old box's state cannot be read (as in an AZ outage), failover refuses " +
		"unless `--force-unknown` is given: use it only when you know the old box is down, or two Services boxes may run at once. " +
		"With `failover.require_in_sync`, a replica that `replica.replication_check_command` does not find in sync is refused unless `--force-stale` is given. " +
		"`--dry-run` posts the plan and stops.",
	Reboot: "Reboots the Services box (EC2 RebootInstances) and waits until it has really rebooted (its SSM agent answers with a boot time after the reboot), " +
		"starts the app and checks the status checks and, if configured, the app's health URL. The plan states the expected downtime, measured on the last reboot. " +
		"`--dry-run` posts the plan and stops.",
	Resize: "Changes the Services box's instance type: stops it (forced if it does not stop in time), sets the new type, starts it and checks that it is healthy " +
		"on the same private IP with the same volumes. The plan first checks that the type exists, is offered in the box's zone, has the box's architecture " +
		"and presents network and disks as the box expects. If AWS cannot start the new type (no capacity), the box goes back to its old type and is started again. " +
		"`--dry-run` posts the plan and stops.",
	ReplicaBuild: "Prepares the cold-failover replica as the runbook does: makes an image of the running Services box (EC2 CreateImage; without a reboot unless " +
		"`replica.image_reboot` is set, so the image is crash-consistent, as after a power cut) and launches the replica from it with the box's instance type, " +
		"volumes, security groups and instance profile, in `--subnet` or `replica.subnet` (another zone than the box's), tagged with `replica.name_tag`. " +
		"Refused when a replica exists already (use refresh). `--dry-run` posts the plan and stops.",
	ReplicaRefresh: "Recreates the replica, e.g. after an upgrade: builds a new one from an image of the Services box, then retires the old one " +
		"(stopped and kept as `<name_tag>-retired`, or terminated, per `replica.retire`). `--dry-run` posts the plan and stops.",
	BuildersRotate: "Replaces every builder instance so that each reconnects to the current Services box; do it after a restore or failover. " +
		"Builds running on old builders are retried. `--dry-run` posts the plan and stops.",
	BackupPrune: "Deletes backups older than the retention policy, never the newest good one. `--dry-run` lists what would be deleted and stops.",
	Secret: "Reads CIRCLE_SECRET_PASSPHRASE from the Services box and puts it in the builders' launch configuration; " +
		"builders need it when the Services box's address changes. The value is never posted in Slack. `--dry-run` posts the plan and stops.",
	Approve: "Approves a pending request; the request ID is in the request message, which also has buttons. " +
		"The approval covers exactly the plan shown, and the plan is checked against AWS again before it runs.",
	Deny: "Refuses a pending request; nothing runs. The request ID is in the request message.",
}

// HelpText lists the commands for which allowed(spec.Class) is true,
// grouped by class, or explains one command if topic is set. slashCommand
// is the configured command, e.g. "/circleci". A nil allowed allows all.
func HelpText(slashCommand string, topic Name, allowed func(Class) bool) string {
	slash := slashPrefix(slashCommand)
	if allowed == nil {
		allowed = func(Class) bool { return true }
	}
	if topic != "" {
		if s, ok := specByName[topic]; ok {
			return EscapeMrkdwn(topicHelp(slash, s, allowed(s.Class)))
		}
	}
	var sections []string
	for _, class := range classOrder {
		if !allowed(class) {
			continue
		}
		lines := []string{headings[class]}
		for _, s := range specs {
			if s.Class == class {
				lines = append(lines, line(slash, s))
			}
		}
		if len(lines) > 1 {
			sections = append(sections, strings.Join(lines, "\n"))
		}
	}
	if len(sections) == 0 {
		return "There are no commands you may run here."
	}
	return EscapeMrkdwn(strings.Join(sections, "\n\n") + "\n\nFor more on one command: `" + slash + " help <command>`")
}

// EscapeMrkdwn escapes the three characters Slack's mrkdwn reserves, even
// inside code spans: unescaped, "<snapshot-id|latest>" renders as a link.
func EscapeMrkdwn(s string) string {
	return mrkdwnEscaper.Replace(s)
}

var mrkdwnEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func line(slash string, s Spec) string {
	return "`" + slash + " " + s.Usage + "` — " + s.Summary
}

func topicHelp(slash string, s Spec, mayRun bool) string {
	var b strings.Builder
	b.WriteString(line(slash, s))
	b.WriteString("\n\n")
	b.WriteString(strings.ReplaceAll(details[s.Name], "{cmd}", slash))
	if s.Name == Help {
		return b.String() // anyone may ask for help
	}
	b.WriteString("\n\n")
	b.WriteString(who[s.Class])
	if !mayRun {
		b.WriteString(" You may not run it.")
	}
	return b.String()
}
