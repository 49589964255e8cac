package authz

import (
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/config"
)

func TestCheck(t *testing.T) {
	roles := config.Roles{Viewers: []string{"UV"}, Operators: []string{"UO"}, Approvers: []string{"UA"}}
	p := New(roles, []string{"C1"})
	open := New(config.Roles{Operators: []string{"UO"}}, nil)
	spec := func(n commands.Name) commands.Spec { s, _ := commands.SpecOf(n); return s }
	cases := []struct {
		name          string
		p             *Policy
		user, channel string
		cmd           commands.Name
		refused       string // "" = allowed
	}{
		{"viewer reads", p, "UV", "C1", commands.Status, ""},
		{"viewer may not back up", p, "UV", "C1", commands.BackupNow, "operator role"},
		{"viewer may not approve", p, "UV", "C1", commands.Approve, "approver role"},
		{"operator requests restore", p, "UO", "C1", commands.Restore, ""},
		{"operator may not approve", p, "UO", "C1", commands.Approve, "approver role"},
		{"approver approves", p, "UA", "C1", commands.Approve, ""},
		{"approver reads", p, "UA", "C1", commands.History, ""},
		{"approver may not request", p, "UA", "C1", commands.Failover, "operator role"},
		{"stranger may not read when viewers are listed", p, "UX", "C1", commands.Status, "viewer role"},
		{"stranger gets help", p, "UX", "C1", commands.Help, ""},
		{"wrong channel", p, "UO", "C2", commands.Status, "only take commands in <#C1>"},
		{"empty viewers: everyone reads", open, "UX", "C9", commands.Status, ""},
		{"empty viewers: not everyone operates", open, "UX", "C9", commands.BackupNow, "operator role"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.p.Check(c.user, c.channel, spec(c.cmd))
			switch {
			case c.refused == "" && r != nil:
				t.Fatalf("refused: %s", r.Reason)
			case c.refused != "" && (r == nil || !strings.Contains(r.Reason, c.refused)):
				t.Fatalf("got %v, want refusal with %q", r, c.refused)
			}
		})
	}
}
