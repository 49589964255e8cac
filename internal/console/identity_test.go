package console

import (
	"strings"
	"testing"

	"github.com/circlebot/circlebot/internal/config"
)

func TestIdentity(t *testing.T) {
	bbolt := config.Defaults()
	bbolt.Roles.Operators = []string{"U0ALICE"}
	shared := bbolt
	shared.Store.Backend = "dynamodb"
	named := shared
	named.Console.User = "U0CAROL"

	for _, tc := range []struct {
		name      string
		cfg       config.Config
		flag      string
		sandbox   bool
		user      string
		allowAs   bool
		errSaying string
	}{
		{"bbolt: the first operator, /as allowed", bbolt, "", false, "U0ALICE", true, ""},
		{"bbolt: --user", bbolt, "u0bob", false, "U0BOB", true, ""},
		{"shared store without console.user", shared, "", false, "", false, "console.user"},
		{"shared store without console.user, in the sandbox too", shared, "U0BOB", true, "", false, "console.user"},
		{"shared store: console.user, no /as", named, "", false, "U0CAROL", false, ""},
		{"shared store: --user repeating console.user", named, "u0carol", false, "U0CAROL", false, ""},
		{"shared store: --user someone else", named, "U0BOB", false, "", false, "console.user (U0CAROL)"},
		{"sandbox on a shared store: /as allowed", named, "U0BOB", true, "U0BOB", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, allowAs, err := Identity(tc.cfg, tc.flag, tc.sandbox)
			if tc.errSaying != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSaying) {
					t.Fatalf("want an error naming %q, got %v (user %q)", tc.errSaying, err, user)
				}
				return
			}
			if err != nil || user != tc.user || allowAs != tc.allowAs {
				t.Fatalf("got %q, /as %v, %v; want %q, /as %v", user, allowAs, err, tc.user, tc.allowAs)
			}
		})
	}
}

func TestSandboxNeedsTheLauncherAndALocalMoto(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	moto := "http://127.0.0.1:50123"
	if on, err := Sandbox(env("AWS_ENDPOINT_URL", moto)); on || err != nil {
		t.Fatalf("not launched by the sandbox: %v %v", on, err)
	}
	if on, err := Sandbox(env(SandboxEnv, moto, "AWS_ENDPOINT_URL", moto)); !on || err != nil {
		t.Fatalf("launched by the sandbox: %v %v", on, err)
	}
	for _, e := range []func(string) string{
		env(SandboxEnv, "1"),
		env(SandboxEnv, moto), // real AWS
		env(SandboxEnv, moto, "AWS_ENDPOINT_URL", "http://127.0.0.1:50124"),
		env(SandboxEnv, "https://dynamodb.us-east-1.amazonaws.com", "AWS_ENDPOINT_URL", "https://dynamodb.us-east-1.amazonaws.com"),
	} {
		if on, err := Sandbox(e); on || err == nil || !strings.Contains(err.Error(), SandboxEnv) {
			t.Errorf("%s=%q, AWS_ENDPOINT_URL=%q: want a refusal naming the variable, got %v %v", SandboxEnv, e(SandboxEnv), e("AWS_ENDPOINT_URL"), on, err)
		}
	}
}
