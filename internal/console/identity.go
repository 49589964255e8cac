package console

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/circlebot/circlebot/internal/config"
)

// SandboxEnv is set by cmd/sandbox (`make demo`) for the command it
// launches, to the URL of its own moto_server, which it also gives as
// AWS_ENDPOINT_URL.
const SandboxEnv = "CIRCLEBOT_SANDBOX"

// Sandbox reports whether cmd/sandbox launched this console: SandboxEnv
// is set, on this host (loopback), and is where AWS_ENDPOINT_URL points.
// Set anywhere else it is an error rather than ignored, and never turns a
// console on real AWS into one where anybody can be anybody.
func Sandbox(env func(string) string) (bool, error) {
	v := strings.TrimSpace(env(SandboxEnv))
	if v == "" {
		return false, nil
	}
	u, err := url.Parse(v)
	local := err == nil && u.Host != "" && isLoopback(u.Hostname())
	if !local || v != strings.TrimSpace(env("AWS_ENDPOINT_URL")) {
		return false, fmt.Errorf("%s=%q: the sandbox mode is for cmd/sandbox (make demo) only, with AWS_ENDPOINT_URL at the same local moto_server (it is %q); unset %s", SandboxEnv, v, env("AWS_ENDPOINT_URL"), SandboxEnv)
	}
	return true, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Identity says whom the console acts as (flagUser is --user) and
// whether /as may switch to somebody else:
//
//   - store.backend dynamodb: the live state the production replicas
//     share, approvals included. The console is console.user (required),
//     --user may only repeat it, and /as is refused: otherwise whoever
//     has a shell could approve their own request as a colleague. The
//     sandbox alone (sandbox true) keeps /as there.
//   - bbolt: the file this process holds (its lock keeps a serving bot
//     out), which whoever runs the console could edit anyway: any user,
//     /as allowed, defaulting to console.user, else the first operator.
func Identity(cfg config.Config, flagUser string, sandbox bool) (user string, allowAs bool, err error) {
	flagUser = strings.ToUpper(strings.TrimSpace(flagUser))
	def := cfg.Console.User
	if def == "" && len(cfg.Roles.Operators) > 0 {
		def = cfg.Roles.Operators[0]
	}
	if def == "" {
		def = "U0CONSOLE"
	}
	if cfg.Store.Backend != "dynamodb" {
		return orElse(flagUser, def), true, nil
	}
	if err := cfg.ValidateConsole(); err != nil {
		return "", false, fmt.Errorf("config: %w", err)
	}
	if sandbox {
		return orElse(flagUser, cfg.Console.User), true, nil
	}
	if flagUser != "" && flagUser != cfg.Console.User {
		return "", false, fmt.Errorf("--user %s: on the shared store (store.backend dynamodb) the console acts only as console.user (%s)", flagUser, cfg.Console.User)
	}
	return cfg.Console.User, false, nil
}

func orElse(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
