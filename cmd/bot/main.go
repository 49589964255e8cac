// Command bot is the CircleCI Services box disaster-recovery ChatOps bot.
//
//	bot [--config FILE] serve|console|check-config|iam-policy|doctor|version
//	bot backup --reason "..." [--wait] [--method ebs|tarball] [--url URL]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/console"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// the module version or VCS revision recorded by the Go toolchain is used.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second Ctrl-C or SIGTERM during the graceful shutdown kills at once.
	go func() { <-ctx.Done(); stop() }()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bot:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `usage: bot [--config FILE] <command>

commands:
  serve         answer Slack (HTTP on "listen"; Socket Mode when SLACK_APP_TOKEN is set),
                /metrics on "metrics.listen"; with SLACK_SECRET_ARN the Slack tokens
                come from that Secrets Manager secret, read again on SIGHUP
  console       a local chat shell: type /circleci commands as a Slack user
                (console.user on a shared store; /as switches users only on
                bbolt or in the sandbox)
  check-config  validate the config file and environment, then exit
  iam-policy    print the IAM policy the bot needs for this config (JSON, on stdout)
  doctor        will a recovery work right now? read-only checks and dry runs of
                every operation against the account; exits 1 when anything would
                block one
  version       print the version
  backup        ask a running bot for a backup through its API (bot backup --help)

flags:
  --config FILE  the YAML config (default bot.yaml)
  --user ID      console: the Slack user ID to act as (default: console.user, else
                 the first operator; on a shared store only console.user)
  --channel ID   console: the channel ID to act in (default: the first allowed channel)
  --account ID   iam-policy: the 12-digit AWS account the ARNs name (default: any)
`

func run(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	// `bot backup` is a client of a running bot with flags of its own.
	if len(args) > 0 && args[0] == "backup" {
		return backupCmd(ctx, args[1:], env, stdout, stderr)
	}
	fs := flag.NewFlagSet("bot", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "bot.yaml", "")
	user := fs.String("user", "", "")
	channel := fs.String("channel", "", "")
	account := fs.String("account", "", "")
	// Flags may come before or after the subcommand ("bot serve --config x").
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, usage)
				return nil
			}
			return usageError{err.Error() + "\n" + usage}
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) != 1 {
		return usageError{"expected exactly one command\n" + usage}
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: logLevel(env("LOG_LEVEL"))}))

	switch rest[0] {
	case "version":
		fmt.Fprintln(stdout, "circlebot", Version())
		return nil
	case "check-config":
		return checkConfig(*cfgPath, env, stdout)
	case "iam-policy":
		return iamPolicy(*cfgPath, *account, env, stdout, stderr)
	case "doctor":
		return doctor(ctx, *cfgPath, env, log, stdout)
	case "serve":
		cfg, err := config.Load(*cfgPath, env)
		if err != nil {
			return err
		}
		if err := cfg.ValidateServe(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		// Registered before app.New reads the secret: a SIGHUP from here on
		// reloads it rather than ending the process (SIGHUP's default).
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		a, err := app.New(ctx, app.Options{Config: cfg, Version: Version(), Log: log})
		if err != nil {
			return err
		}
		defer a.Close()
		served := make(chan struct{})
		defer close(served)
		go func() {
			for {
				select {
				case <-served:
					return
				case <-hup:
					log.Info("SIGHUP: reading the Slack secrets again")
					a.ReloadSlack(ctx)
				}
			}
		}()
		ls, err := a.Listen()
		if err != nil {
			return err
		}
		return a.ServeAll(ctx, ls)
	case "console":
		cfg, err := config.Load(*cfgPath, env)
		if err != nil {
			return err
		}
		// Who the console is, decided before it joins any state: on a
		// shared store, console.user and nobody else.
		sandbox, err := console.Sandbox(env)
		if err != nil {
			return err
		}
		who, allowAs, err := console.Identity(cfg, *user, sandbox)
		if err != nil {
			return err
		}
		// The console is interactive: keep log lines out of the chat unless
		// asked for, they go to stderr at warning level.
		if env("LOG_LEVEL") == "" {
			log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		// The console talks to no Slack: it needs no Slack secret, and
		// reading one would need a right it has no use for.
		cfg.Secrets.SecretARN = ""
		a, err := app.New(ctx, app.Options{Config: cfg, Version: Version(), Log: log, Console: true})
		if err != nil {
			return err
		}
		defer a.Close()
		c := &console.Console{Bot: a.Bot, Roles: cfg.Roles, In: stdin, Out: stdout, Audit: a.Store,
			User: who, AllowAs: allowAs, Channel: first(*channel, cfg.Slack.AllowedChannels, "C0CONSOLE")}
		// On its own bbolt file the console is the only process: it deals
		// with what the last one left. On a shared store the replicas'
		// leader does, and announces it in Slack; a console taking that
		// announcement would show it only in its own terminal.
		if !a.Store.Shared() {
			a.Resume(ctx, c.Poster)
		}
		return c.Run(ctx)
	default:
		return usageError{fmt.Sprintf("unknown command %q\n%s", rest[0], usage)}
	}
}

// errNotReady: the doctor found something that would block a recovery
// (the table says what); the exit status is non-zero.
var errNotReady = errors.New("doctor: not ready for a recovery (see the table above)")

// doctor checks, read-only and through dry runs, whether a recovery would
// work now, prints the table, and fails when anything would block one.
func doctor(ctx context.Context, path string, env func(string) string, log *slog.Logger, stdout io.Writer) error {
	cfg, err := config.Load(path, env)
	if err != nil {
		return err
	}
	a, err := app.New(ctx, app.Options{Config: cfg, Version: Version(), Log: log})
	if err != nil {
		return err
	}
	defer a.Close()
	rep := a.Doctor.Run(ctx)
	fmt.Fprint(stdout, bot.DoctorTable(rep))
	if !rep.Ready() {
		return errNotReady
	}
	return nil
}

func checkConfig(path string, env func(string) string, out io.Writer) error {
	cfg, err := config.Load(path, env)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(out, "warning: %s: %s\n", w.Key, w.Why)
	}
	mode := "HTTP (/slack/commands, /slack/interactions)"
	if !cfg.Secrets.AppToken.Empty() {
		mode = "Socket Mode"
	}
	if arn := cfg.Secrets.SecretARN; arn != "" {
		// check-config calls no AWS: the secret's fields are checked when
		// serve starts, and serve refuses to start if they are wrong.
		mode = "Socket Mode or HTTP (as the Slack secret " + arn + " says: app_token, signing_secret; read and checked when serve starts)"
	}
	if err := cfg.ValidateServe(); err != nil {
		fmt.Fprintf(out, "%s: settings are valid; `bot serve` would refuse to start: %v\n", path, err)
		fmt.Fprintln(out, "(`bot console` needs no Slack secrets)")
		return errors.New("not ready to serve")
	}
	metrics := "not served (metrics.listen is empty)"
	if cfg.Metrics.Listen != "" {
		metrics = "at " + cfg.Metrics.Listen
		if !cfg.Secrets.MetricsToken.Empty() {
			metrics += " (BOT_METRICS_TOKEN required)"
		}
	}
	fmt.Fprintf(out, "%s: ok; serve would answer Slack over %s at %s, Web API %s; /metrics %s\n", path, mode, cfg.Listen, cfg.Secrets.APIURL, metrics)
	return nil
}

// iamPolicy prints deploy/iam/policy.json filled in for the config: the
// one policy the bot needs, with nothing it does not (a statement whose
// setting is unset is left out, and said so on stderr). It calls no AWS.
func iamPolicy(path, account string, env func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path, env)
	if err != nil {
		return err
	}
	v, err := iam.ValuesFor(cfg, account)
	if err != nil {
		return usageError{err.Error()}
	}
	doc, omitted, err := iam.Render(iam.Template, v)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(doc); err != nil {
		return err
	}
	for _, o := range omitted {
		var set []string
		for _, n := range o.Needs {
			set = append(set, iam.Needs[n])
		}
		fmt.Fprintf(stderr, "iam-policy: left out %s: it needs %s\n", o.Sid, strings.Join(set, " and "))
	}
	if account == "" {
		fmt.Fprintln(stderr, "iam-policy: the ARNs name any account; --account <id> names yours")
	}
	if cfg.AWS.Region == "" {
		fmt.Fprintln(stderr, "iam-policy: the ARNs name any region; aws.region names yours")
	}
	return nil
}

func first(flagVal string, list []string, fallback string) string {
	if flagVal != "" {
		return strings.ToUpper(flagVal)
	}
	if len(list) > 0 {
		return list[0]
	}
	return fallback
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
