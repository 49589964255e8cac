package slackio

import (
	"testing"

	"github.com/slack-go/slack"
)

func TestFromInteractionReadsCommandButtons(t *testing.T) {
	click := func(actionID, value string) slack.InteractionCallback {
		var cb slack.InteractionCallback
		cb.Type = slack.InteractionTypeBlockActions
		cb.TriggerID = "trig"
		cb.User.ID = "U1"
		cb.Channel.ID = "C1"
		cb.ActionCallback.BlockActions = []*slack.BlockAction{{ActionID: actionID, Value: value}}
		return cb
	}
	for _, tc := range []struct {
		id, value string
		ok        bool
	}{
		{ButtonActionID, "status", true},
		{ButtonID("approve"), "approve req-1", true},
		{ButtonID("deny"), "deny req-1", true},
		{"circlebot:cmdx", "status", false}, // not ours: a prefix is not enough
		{"other", "status", false},
		{ButtonID("approve"), "", false},
	} {
		req, ok := FromInteraction(click(tc.id, tc.value))
		if ok != tc.ok || (ok && (req.Text != tc.value || req.UserID != "U1" || req.ChannelID != "C1")) {
			t.Errorf("%s %q: ok=%v req=%+v", tc.id, tc.value, ok, req)
		}
	}
}
