package app

import (
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/store"
)

// An operator's console on the shared store beats like a replica (its
// locks must be told alive or dead) but is not one: status must not count
// it towards the two replicas that survive a zone's outage.
func TestStatusDoesNotCountAConsoleAsAReplica(t *testing.T) {
	reps := []store.Replica{
		{Process: "p-a", Name: "replica-a"},
		{Process: "p-con", Name: "laptop", Role: store.RoleConsole},
		{Process: "p-dead", Name: "replica-old"},
	}
	alive := func(p string) bool { return p != "p-dead" }
	line := describeReplicas(reps, alive, "p-a", "p-a")
	for _, want := range []string{"Bot replicas alive: `replica-a` (leader) (answering);", "Consoles attached: `laptop`.", "Only one replica is alive"} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %q in %q", want, line)
		}
	}
	if strings.Contains(line, "replica-old") {
		t.Errorf("a dead replica is listed: %q", line)
	}
	reps = append(reps, store.Replica{Process: "p-b", Name: "replica-b"})
	if line := describeReplicas(reps, alive, "p-a", "p-con"); strings.Contains(line, "Only one replica") || !strings.Contains(line, "`laptop` (answering)") {
		t.Errorf("two replicas and a console: %q", line)
	}
}
