package engine_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The layers run one way: the conversation (bot) calls the engine, the
// engine calls ops; the grammar (commands) is a leaf both read. Nothing
// below imports what is above it.
func TestImportsRunOneWay(t *testing.T) {
	const mod = "github.com/circlebot/circlebot/internal/"
	below := map[string][]string{
		"commands": {"bot", "engine", "ops", "app"},
		"ops":      {"bot", "engine", "commands", "app", "approvals", "slackio"},
		"engine":   {"bot", "app", "slackio", "console"},
		"journal":  {"bot", "engine", "ops", "app"},
	}
	for pkg, forbidden := range below {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := map[string]bool{}
		for _, d := range strings.Fields(string(out)) {
			deps[strings.TrimPrefix(d, mod)] = true
		}
		for _, f := range forbidden {
			if deps[f] {
				t.Errorf("internal/%s imports internal/%s, which is above it", pkg, f)
			}
		}
	}
}
