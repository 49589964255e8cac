package commands

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Parse turns the text after the slash command ("status", "backup now
// tarball", ...) into a Command. Errors are always *UsageError. It never
// panics on any input.
func Parse(text string) (Command, error) {
	c, ue := parse(text)
	if ue != nil {
		return Command{}, ue
	}
	return c, nil
}

func parse(text string) (Command, *UsageError) {
	if len(text) > MaxInputBytes {
		return Command{}, &UsageError{
			Problem: fmt.Sprintf("that is %d bytes long; a command is at most %d", len(text), MaxInputBytes),
			Usage:   overview,
		}
	}
	if !utf8.ValidString(text) {
		return Command{}, &UsageError{Problem: "that is not valid UTF-8 text", Usage: overview}
	}
	words, flags := splitWords(tokens(text))
	name, args, ue := resolve(words)
	if ue != nil {
		return Command{}, ue
	}
	// "restore --help" is a question, not a malformed restore: answer it
	// whatever else is on the line.
	if name != Help && hasFlag(flags, flagHelp) {
		return Command{Name: Help, Topic: name}, nil
	}
	c := Command{Name: name}
	if ue := applyFlags(&c, flags); ue != nil {
		return Command{}, ue
	}
	if ue := argParsers[name](&c, args); ue != nil {
		return Command{}, ue
	}
	if c.Rebuild && c.Source.Kind == SourceS3 {
		// A tarball is restored onto the running box: there is nothing to rebuild.
		return Command{}, problemf(c.Name, "--rebuild applies to restores from EBS snapshots, not to a tarball (%s)", c.Source.String())
	}
	return c, nil
}

// groups maps the first word of each multi-word command to its second
// words, in help order: "backup" -> list, status, now, prune.
var groups = func() map[string][]string {
	g := map[string][]string{}
	for _, s := range specs {
		if first, second, ok := strings.Cut(string(s.Name), " "); ok {
			g[first] = append(g[first], second)
		}
	}
	return g
}()

// commandWords are what an unknown word is compared with for a
// suggestion; whole multi-word names are included so that "backupnow"
// and "backup-now" get "backup now".
var commandWords = func() []string {
	var ws []string
	seen := map[string]bool{}
	for _, s := range specs {
		first, _, multi := strings.Cut(string(s.Name), " ")
		if !seen[first] {
			seen[first] = true
			ws = append(ws, first)
		}
		if multi {
			ws = append(ws, string(s.Name))
		}
	}
	return ws
}()

// overview is the usage shown when we do not know which command was
// meant: one line per first word, so it stays short.
var overview = func() string {
	var lines []string
	seen := map[string]bool{}
	for _, s := range specs {
		first, _, multi := strings.Cut(string(s.Name), " ")
		if seen[first] {
			continue
		}
		seen[first] = true
		if multi {
			lines = append(lines, first+" "+strings.Join(groups[first], "|"))
		} else {
			lines = append(lines, s.Usage)
		}
	}
	return strings.Join(lines, "\n")
}()

func groupUsage(first string) string {
	var lines []string
	for _, second := range groups[first] {
		lines = append(lines, specByName[Name(first+" "+second)].Usage)
	}
	return strings.Join(lines, "\n")
}

// orList joins words as "a, b or c".
func orList(ws []string) string {
	if len(ws) <= 1 {
		return strings.Join(ws, "")
	}
	return strings.Join(ws[:len(ws)-1], ", ") + " or " + ws[len(ws)-1]
}

// resolve finds the command named by the first word or two of words and
// returns the words after it.
func resolve(words []string) (Name, []string, *UsageError) {
	if len(words) == 0 {
		return Help, nil, nil
	}
	first := asciiLower(words[0])
	if subs, ok := groups[first]; ok {
		if len(words) == 1 {
			return "", nil, &UsageError{
				Problem: fmt.Sprintf("%s needs a subcommand: %s", first, orList(subs)),
				Usage:   groupUsage(first),
			}
		}
		n := Name(first + " " + asciiLower(words[1]))
		if _, ok := specByName[n]; !ok {
			return "", nil, &UsageError{
				Problem: fmt.Sprintf("%s is not a %s subcommand (expected %s)%s", quote(words[1]), first, orList(subs), didYouMean(words[1], subs)),
				Usage:   groupUsage(first),
			}
		}
		return n, words[2:], nil
	}
	if _, ok := specByName[Name(first)]; ok {
		return Name(first), words[1:], nil
	}
	return "", nil, &UsageError{
		Problem: fmt.Sprintf("unknown command %s%s", quote(words[0]), didYouMean(words[0], commandWords)),
		Usage:   overview,
	}
}

// argParsers reads the positional arguments of each command. Every Spec
// has an entry (tested).
var argParsers = map[Name]func(c *Command, args []string) *UsageError{
	Help:           parseHelpArgs,
	Status:         noArgs,
	Doctor:         noArgs,
	BackupNow:      parseBackupNow,
	BackupList:     noArgs,
	BackupStatus:   parseBackupStatus,
	BackupPrune:    noArgs,
	Restore:        parseRestore,
	Failover:       parseFailover,
	Reboot:         noArgs,
	Resize:         parseResize,
	ReplicaBuild:   noArgs,
	ReplicaRefresh: noArgs,
	BuildersStatus: noArgs,
	BuildersRotate: noArgs,
	Approve:        parseRequestID,
	Deny:           parseRequestID,
	Cancel:         parseOpIDArg,
	Resume:         parseOpIDArg,
	History:        parseHistory,
	ReportNow:      noArgs,
	DrillNow:       noArgs,
	Secret:         noArgs,
}

func extra(n Name, tok string) *UsageError {
	return problemf(n, "unexpected extra argument %s", quote(tok))
}

func noArgs(c *Command, args []string) *UsageError {
	if len(args) > 0 {
		return problemf(c.Name, "%s takes no arguments, but got %s", c.Name, quote(args[0]))
	}
	return nil
}

func parseHelpArgs(c *Command, args []string) *UsageError {
	if len(args) == 0 {
		return nil
	}
	topic, rest, ue := resolve(args)
	if ue != nil {
		return ue
	}
	if len(rest) > 0 {
		return extra(Help, rest[0])
	}
	c.Topic = topic
	return nil
}

func parseBackupNow(c *Command, args []string) *UsageError {
	switch {
	case len(args) == 0:
		return nil
	case len(args) > 1:
		return extra(c.Name, args[1])
	}
	switch m := BackupMethod(asciiLower(args[0])); m {
	case MethodEBS, MethodTarball:
		c.Method = m
		return nil
	}
	methods := []string{string(MethodEBS), string(MethodTarball)}
	return problemf(c.Name, "%s is not a backup method (expected ebs or tarball)%s", quote(args[0]), didYouMean(args[0], methods))
}

func parseBackupStatus(c *Command, args []string) *UsageError {
	switch {
	case len(args) == 0:
		return problemf(c.Name, "backup status needs a backup ID (bk-…), a snapshot ID or s3://bucket/key")
	case len(args) > 1:
		return extra(c.Name, args[1])
	}
	tok := args[0]
	if isS3URI(tok) {
		bucket, key, problem := parseS3URI(tok)
		if problem != "" {
			return problemf(c.Name, "%s", problem)
		}
		c.ID = "s3://" + bucket + "/" + key
		return nil
	}
	if id, ok := awsID(tok, "snap-"); ok {
		c.ID = id
		return nil
	}
	if id, ok := BackupID(tok); ok {
		c.ID = id
		return nil
	}
	return problemf(c.Name, "%s", snapshotProblem(tok, "backup status", ", a backup ID (bk-…) or s3://bucket/key"))
}

func parseRestore(c *Command, args []string) *UsageError {
	switch {
	case len(args) == 0:
		return problemf(c.Name, "restore needs a source: a snapshot ID, latest, or s3://bucket/key")
	case len(args) > 1:
		return problemf(c.Name, "unexpected extra argument %s; restore takes exactly one source", quote(args[1]))
	}
	tok := args[0]
	switch {
	case asciiLower(tok) == "latest":
		c.Source = RestoreSource{Kind: SourceLatest}
	case isS3URI(tok):
		bucket, key, problem := parseS3URI(tok)
		if problem != "" {
			return problemf(c.Name, "%s", problem)
		}
		c.Source = RestoreSource{Kind: SourceS3, Bucket: bucket, Key: key}
	default:
		if id, ok := BackupID(tok); ok {
			// The bot's restore point by its own ID: the plan finds its
			// snapshots by their tag.
			c.Source = RestoreSource{Kind: SourceSnapshot, SnapshotID: id}
			return nil
		}
		id, ok := awsID(tok, "snap-")
		if !ok {
			return problemf(c.Name, "%s", snapshotProblem(tok, "restore", ", a backup ID (bk-…), latest, or s3://bucket/key"))
		}
		c.Source = RestoreSource{Kind: SourceSnapshot, SnapshotID: id}
	}
	return nil
}

func parseFailover(c *Command, args []string) *UsageError {
	if len(args) == 0 {
		return nil
	}
	// The commonest slip is naming the target without --to.
	if id, ok := awsID(args[0], "i-"); ok {
		return problemf(c.Name, "unexpected argument %s; to fail over to that instance, write --to %s", quote(args[0]), id)
	}
	return extra(c.Name, args[0])
}

func parseResize(c *Command, args []string) *UsageError {
	switch {
	case len(args) == 0:
		return problemf(c.Name, "resize needs an instance type, e.g. resize m5.2xlarge")
	case len(args) > 1:
		return problemf(c.Name, "unexpected extra argument %s; resize takes one instance type", quote(args[1]))
	}
	t, problem := parseInstanceType(args[0])
	if problem != "" {
		return problemf(c.Name, "%s", problem)
	}
	c.InstanceType = t
	return nil
}

func parseRequestID(c *Command, args []string) *UsageError {
	return parseOurID(c, args, "a request ID", "req-7f3a9c")
}

func parseOpIDArg(c *Command, args []string) *UsageError {
	return parseOurID(c, args, "an operation ID", "op-20261128-031500-7f3a")
}

func parseOurID(c *Command, args []string, noun, example string) *UsageError {
	switch {
	case len(args) == 0:
		return problemf(c.Name, "%s needs %s, e.g. %s %s", c.Name, noun, c.Name, example)
	case len(args) > 1:
		return extra(c.Name, args[1])
	}
	id, ok := parseOpID(args[0])
	if !ok {
		return problemf(c.Name, "%s is not %s (expected 3 to 64 letters, digits and dashes, e.g. %s)", quote(args[0]), noun, example)
	}
	c.ID = id
	return nil
}

func parseHistory(c *Command, args []string) *UsageError {
	c.Limit = DefaultHistoryLimit
	switch {
	case len(args) == 0:
		return nil
	case len(args) > 1:
		return extra(c.Name, args[1])
	}
	tok := args[0]
	for i := 0; i < len(tok); i++ {
		if tok[i] < '0' || tok[i] > '9' {
			return problemf(c.Name, "%s is not a number; history takes N from 1 to %d", quote(tok), MaxHistoryLimit)
		}
	}
	// Trim first so a long run of zeros is not "out of range" and a long
	// run of digits cannot overflow.
	digits := strings.TrimLeft(tok, "0")
	n := MaxHistoryLimit + 1
	if len(digits) <= 3 {
		n, _ = strconv.Atoi("0" + digits)
	}
	if n < 1 || n > MaxHistoryLimit {
		return problemf(c.Name, "history shows 1 to %d entries; %s is out of range", MaxHistoryLimit, quote(tok))
	}
	c.Limit = n
	return nil
}
