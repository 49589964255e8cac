package cloudformation_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/circlebot/circlebot/deploy/cloudformation"
	"github.com/circlebot/circlebot/deploy/systemd"
)

// Docker cannot be built on the test machine, so the Dockerfile, the
// systemd unit and the stack are checked by reading them: the same binary
// and config paths, the same port, the same unprivileged user ID.
func TestTheDockerfileTheUnitAndTheStackAgree(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	docker := string(raw)
	unit := string(systemd.Unit)
	stack := string(cloudformation.Committed)
	find := func(what, re, in string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(in)
		if m == nil {
			t.Fatalf("%s: no match for %s", what, re)
		}
		return m[1]
	}
	entry := find("Dockerfile ENTRYPOINT", `(?m)^ENTRYPOINT \["([^"]+)", "--config", "([^"]+)"\]`, docker)
	config := find("Dockerfile ENTRYPOINT", `(?m)^ENTRYPOINT \["[^"]+", "--config", "([^"]+)"\]`, docker)
	cmd := find("Dockerfile CMD", `(?m)^CMD \["([a-z-]+)"\]`, docker)
	if want := "ExecStart=" + entry + " --config " + config + " " + cmd; !strings.Contains(unit, want+"\n") {
		t.Errorf("the unit does not run %q as the image does", want)
	}
	port := find("Dockerfile EXPOSE", `(?m)^EXPOSE ([0-9]+)$`, docker)
	if !strings.Contains(stack, `"listen: 127.0.0.1:`+port+`"`) || !strings.Contains(stack, "http://127.0.0.1:"+port+"/healthz") {
		t.Errorf("the stack's listen and health check are not on the image's port %s", port)
	}
	uid := find("Dockerfile USER", `(?m)^USER ([0-9]+):[0-9]+$`, docker)
	if uid == "0" {
		t.Fatal("the image runs as root")
	}
	if !strings.Contains(stack, "useradd --system --uid "+uid+" ") || !strings.Contains(unit, "useradd --system --uid "+uid+" ") {
		t.Errorf("the stack and the unit do not make the image's user %s", uid)
	}
	if !strings.Contains(unit, "\nUser=circlebot\n") {
		t.Error("the unit does not run as the circlebot user")
	}
	for _, p := range []string{entry, config} {
		if !strings.Contains(stack, p) {
			t.Errorf("the stack does not install %s", p)
		}
	}
}
