package commands

import (
	"strings"
	"testing"
)

func only(classes ...Class) func(Class) bool {
	return func(c Class) bool {
		for _, x := range classes {
			if x == c {
				return true
			}
		}
		return false
	}
}

func TestHelpViewer(t *testing.T) {
	h := plainHelp("/circleci", "", only(ClassRead))
	for _, s := range Specs() {
		line := "`/circleci " + s.Usage + "`"
		if s.Class == ClassRead && !strings.Contains(h, line) {
			t.Errorf("viewer help lacks %s", line)
		}
		if s.Class != ClassRead && strings.Contains(h, line) {
			t.Errorf("viewer help lists %s", line)
		}
	}
	for _, w := range []string{"restore", "failover", "approve", "deny", "builders rotate", "--dry-run"} {
		if strings.Contains(h, w) {
			t.Errorf("viewer help mentions %q:\n%s", w, h)
		}
	}
	for _, heading := range []string{headings[ClassOperate], headings[ClassDestructive], headings[ClassDecide]} {
		if strings.Contains(h, heading) {
			t.Errorf("viewer help has heading %s for a class it may not run", heading)
		}
	}
	if !strings.Contains(h, headings[ClassRead]) {
		t.Errorf("viewer help lacks heading %s", headings[ClassRead])
	}
}

func TestHelpApprover(t *testing.T) {
	h := plainHelp("/circleci", "", only(ClassRead, ClassDecide))
	for _, want := range []string{"`/circleci approve <request-id>`", "`/circleci deny <request-id>`", headings[ClassDecide]} {
		if !strings.Contains(h, want) {
			t.Errorf("approver help lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "`/circleci restore") || strings.Contains(h, headings[ClassOperate]) {
		t.Errorf("approver-only help lists operator commands:\n%s", h)
	}
}

func TestHelpFull(t *testing.T) {
	h := plainHelp("/ops", "", func(Class) bool { return true })
	for _, s := range Specs() {
		want := "`/ops " + s.Usage + "` — " + s.Summary
		if !strings.Contains(h, want) {
			t.Errorf("full help lacks %q", want)
		}
	}
	if strings.Contains(h, "/circleci") {
		t.Errorf("help hard-codes /circleci:\n%s", h)
	}
	// Headings appear in class order.
	last := -1
	for _, c := range classOrder {
		i := strings.Index(h, headings[c])
		if i < last {
			t.Errorf("heading %s out of order", headings[c])
		}
		last = i
	}
	// A Slack section holds 3,000 characters.
	if n := len([]rune(h)); n > 3000 {
		t.Errorf("full help is %d characters; a Slack section holds 3000", n)
	}
	if got := plainHelp("/ops", "", nil); got != h {
		t.Errorf("nil allowed should allow everything")
	}
}

func TestHelpNothingAllowed(t *testing.T) {
	h := plainHelp("/circleci", "", only())
	if strings.Contains(h, "*") || strings.Contains(h, "`/circleci") {
		t.Errorf("help with nothing allowed lists something:\n%s", h)
	}
}

func TestHelpTopic(t *testing.T) {
	for _, s := range Specs() {
		h := plainHelp("/ops", s.Name, only(ClassRead))
		if !strings.HasPrefix(h, "`/ops "+s.Usage+"`") {
			t.Errorf("help %s does not start with its usage:\n%s", s.Name, h)
		}
		if strings.Contains(h, "{cmd}") || strings.Contains(h, "/circleci") {
			t.Errorf("help %s has an unfilled or hard-coded slash command:\n%s", s.Name, h)
		}
		if len(h) < len(s.Usage)+len(s.Summary)+40 {
			t.Errorf("help %s has no longer explanation:\n%s", s.Name, h)
		}
		for _, other := range Specs() {
			if other.Name != s.Name && strings.Contains(h, "`/ops "+other.Usage+"` —") {
				t.Errorf("help %s lists %s too", s.Name, other.Name)
			}
		}
		mayNot := strings.Contains(h, "You may not run it.")
		if want := s.Class != ClassRead && s.Name != Help; mayNot != want {
			t.Errorf("help %s for a viewer: says 'may not run' = %v, want %v", s.Name, mayNot, want)
		}
	}
}

func TestSpecs(t *testing.T) {
	seen := map[Name]bool{}
	for _, s := range Specs() {
		if seen[s.Name] {
			t.Errorf("duplicate spec %q", s.Name)
		}
		seen[s.Name] = true
		if s.Usage == "" || s.Summary == "" || strings.Contains(s.Summary, "\n") {
			t.Errorf("spec %q: usage and a one-line summary are required", s.Name)
		}
		if !strings.HasPrefix(s.Usage, string(s.Name)) {
			t.Errorf("spec %q: usage %q does not start with the name", s.Name, s.Usage)
		}
		if got, ok := SpecOf(s.Name); !ok || got != s {
			t.Errorf("SpecOf(%q) = %+v, %v", s.Name, got, ok)
		}
		if argParsers[s.Name] == nil {
			t.Errorf("spec %q has no argument parser", s.Name)
		}
		if details[s.Name] == "" {
			t.Errorf("spec %q has no help details", s.Name)
		}
		if dry := strings.Contains(s.Usage, "--dry-run"); dry != (s.Class == ClassDestructive) {
			t.Errorf("spec %q: usage mentions --dry-run = %v, but class is %s", s.Name, dry, s.Class)
		}
		if (Command{Name: s.Name}).Spec() != s {
			t.Errorf("Command.Spec() for %q", s.Name)
		}
	}
	if len(seen) != len(argParsers) || len(seen) != len(details) {
		t.Errorf("%d specs, %d argument parsers, %d help details", len(seen), len(argParsers), len(details))
	}
	if _, ok := SpecOf("nope"); ok {
		t.Error(`SpecOf("nope") found something`)
	}
	s := Specs()
	s[0].Name = "mutated"
	if Specs()[0].Name == "mutated" {
		t.Error("Specs returns the package's own slice")
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{ClassRead: "read", ClassOperate: "operate", ClassDestructive: "destructive", ClassDecide: "decide", Class(9): "Class(9)"} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), got, want)
		}
	}
}

func TestClasses(t *testing.T) {
	want := map[Name]Class{
		Help: ClassRead, Status: ClassRead, BackupList: ClassRead, BackupStatus: ClassRead, BuildersStatus: ClassRead, History: ClassRead, Doctor: ClassRead,
		BackupNow: ClassOperate, ReportNow: ClassOperate, DrillNow: ClassOperate, Cancel: ClassOperate, Resume: ClassOperate,
		Restore: ClassDestructive, Failover: ClassDestructive, Reboot: ClassDestructive, Resize: ClassDestructive, ReplicaBuild: ClassDestructive, ReplicaRefresh: ClassDestructive, BuildersRotate: ClassDestructive, BackupPrune: ClassDestructive, Secret: ClassDestructive,
		Approve: ClassDecide, Deny: ClassDecide,
	}
	if len(want) != len(Specs()) {
		t.Fatalf("%d classes listed, %d specs", len(want), len(Specs()))
	}
	for n, c := range want {
		if s, _ := SpecOf(n); s.Class != c {
			t.Errorf("%s is %s, want %s", n, s.Class, c)
		}
	}
}

// plainHelp undoes the mrkdwn escaping so assertions read like the usage.
func plainHelp(slash string, topic Name, allowed func(Class) bool) string {
	return strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&").Replace(HelpText(slash, topic, allowed))
}

func TestHelpIsEscapedForSlack(t *testing.T) {
	for _, topic := range append([]Name{""}, Restore, Failover, Approve) {
		if h := HelpText("/ops", topic, nil); strings.ContainsAny(h, "<>") {
			t.Errorf("help %q has raw < or >, which Slack reads as a link:\n%s", topic, h)
		}
	}
}
