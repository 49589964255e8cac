package bot

import (
	"context"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/store"
)

type noAudit struct{}

func (noAudit) Audit(context.Context, store.AuditRecord) error { return nil }
func (noAudit) History(context.Context, int) ([]store.AuditRecord, error) {
	return nil, nil
}

// A dependency left out of the wiring fails start-up, naming the command
// it would have left without a handler, instead of answering a user's
// command at 3 a.m. with "not available".
func TestNewFailsWhenACommandHasNoHandler(t *testing.T) {
	policy := authz.New(config.Roles{}, nil)
	_, err := New(Options{Policy: policy, Audit: noAudit{}, Handlers: Handlers(Deps{Policy: policy, Audit: noAudit{}})})
	if err == nil || !strings.Contains(err.Error(), "no handler for command") {
		t.Fatalf("New without backups, approvals or the engine = %v", err)
	}
	h := Handlers(Deps{Policy: policy, Audit: noAudit{}})
	for _, name := range []string{"help", "status", "history", "builders status"} {
		found := false
		for n := range h {
			found = found || string(n) == name
		}
		if !found {
			t.Errorf("read-only command %q has no handler", name)
		}
	}
}
