// Package authz decides who may run what where, by Slack user and channel
// IDs from the config. It is pure: the caller audits and replies.
package authz

import (
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/commands"
	"github.com/circlebot/circlebot/internal/config"
)

type set map[string]struct{}

func newSet(ids []string) set {
	s := set{}
	for _, id := range ids {
		s[id] = struct{}{}
	}
	return s
}

func (s set) has(id string) bool { _, ok := s[id]; return ok }

// Policy is built once from config; safe for concurrent use.
type Policy struct {
	viewers, operators, approvers set
	channels                      set
	channelList                   []string
}

func New(roles config.Roles, allowedChannels []string) *Policy {
	return &Policy{
		viewers:     newSet(roles.Viewers),
		operators:   newSet(roles.Operators),
		approvers:   newSet(roles.Approvers),
		channels:    newSet(allowedChannels),
		channelList: allowedChannels,
	}
}

// Refusal is a user-facing "no", not a fault.
type Refusal struct {
	Reason string // for the user
	Code   string // for the audit trail: channel, role
}

func (r *Refusal) Error() string { return r.Reason }

// ChannelAllowed reports whether commands are taken in channel at all.
func (p *Policy) ChannelAllowed(channel string) bool {
	return len(p.channels) == 0 || p.channels.has(channel)
}

// May reports whether user holds a role that covers class. Viewers: an empty
// list means everyone in an allowed channel may read.
func (p *Policy) May(user string, class commands.Class) bool {
	switch class {
	case commands.ClassRead:
		return len(p.viewers) == 0 || p.viewers.has(user) || p.operators.has(user) || p.approvers.has(user)
	case commands.ClassOperate, commands.ClassDestructive:
		return p.operators.has(user)
	case commands.ClassDecide:
		return p.approvers.has(user)
	}
	return false
}

// Allowed is the predicate help uses to list only what user may run.
func (p *Policy) Allowed(user string) func(commands.Class) bool {
	return func(c commands.Class) bool { return p.May(user, c) }
}

// Check authorises one command. Help is always allowed in an allowed channel:
// it lists only what the caller may run.
func (p *Policy) Check(user, channel string, spec commands.Spec) *Refusal {
	if !p.ChannelAllowed(channel) {
		names := make([]string, len(p.channelList))
		for i, c := range p.channelList {
			names[i] = "<#" + c + ">"
		}
		return &Refusal{
			Code:   "channel",
			Reason: fmt.Sprintf("Sorry, I only take commands in %s. Nothing was run.", strings.Join(names, ", ")),
		}
	}
	if spec.Name == commands.Help || p.May(user, spec.Class) {
		return nil
	}
	// An operator may withdraw their own request; the approvals rules
	// refuse a deny of anyone else's by a non-approver.
	if spec.Name == commands.Deny && p.operators.has(user) {
		return nil
	}
	return &Refusal{
		Code:   "role",
		Reason: fmt.Sprintf("Sorry <@%s>, `%s` needs the %s role, which you do not have. Nothing was run. Ask whoever runs this bot to add your Slack user ID `%s` to `%s` in its config.", user, spec.Name, roleFor(spec.Class), user, keyFor(spec.Class)),
	}
}

func roleFor(c commands.Class) string {
	switch c {
	case commands.ClassRead:
		return "viewer"
	case commands.ClassDecide:
		return "approver"
	}
	return "operator"
}

func keyFor(c commands.Class) string { return "roles." + roleFor(c) + "s" }
