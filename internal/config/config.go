// Package config owns the bot's configuration: the YAML file (settings) and
// the environment (secrets), their defaults, and their validation.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the YAML file. Field tags are the external contract (design.md);
// rename nothing, add freely.
type Config struct {
	Listen      string      `yaml:"listen"`
	DataDir     string      `yaml:"data_dir"`
	Store       StoreCfg    `yaml:"store"`
	AWS         AWS         `yaml:"aws"`
	Slack       Slack       `yaml:"slack"`
	Roles       Roles       `yaml:"roles"`
	Approvals   Approvals   `yaml:"approvals"`
	ServicesBox ServicesBox `yaml:"services_box"`
	Replica     Replica     `yaml:"replica"`
	Builders    Builders    `yaml:"builders"`
	Backup      Backup      `yaml:"backup"`
	Report      Report      `yaml:"report"`
	Restore     Restore     `yaml:"restore"`
	Drill       Drill       `yaml:"drill"`
	Monitor     Monitor     `yaml:"monitor"`
	Failover    Failover    `yaml:"failover"`
	Secret      SecretCfg   `yaml:"secret"`
	Metrics     MetricsCfg  `yaml:"metrics"`
	Console     ConsoleCfg  `yaml:"console"`
	Ops         OpsCfg      `yaml:"ops"`

	// Secrets come from the environment only, never from the file, so a
	// config file can be committed and shared.
	Secrets Secrets `yaml:"-"`
}

// StoreCfg says where the bot's state lives: bbolt in data_dir (one
// replica), or a DynamoDB table that several replicas share.
type StoreCfg struct {
	Backend string `yaml:"backend"` // bbolt | dynamodb
	// Table is the DynamoDB table (created on first start if missing).
	Table string `yaml:"table"`
	// HeartbeatTTL: a replica not heard from for this long is dead; its
	// operations are announced and can be resumed on another.
	HeartbeatTTL Duration `yaml:"heartbeat_ttl"`
	// LeaseTTL: the leader of scheduled work and outage detection renews
	// its lease every third of this; another replica takes over within it.
	LeaseTTL Duration `yaml:"lease_ttl"`
	// Name is how this replica is named in messages (default: host name).
	Name string `yaml:"name"`
}

// MetricsCfg says where GET /metrics is served: on a listener of its
// own, never on `listen`, which Slack must reach and so is public in
// HTTP mode. The metrics name commands and AWS error codes.
type MetricsCfg struct {
	// Listen is host:port of the metrics listener (default
	// 127.0.0.1:9090: this host only); empty: /metrics is not served.
	// BOT_METRICS_TOKEN, when set, is required as a bearer token.
	Listen string `yaml:"listen"`
}

// ConsoleCfg is the console's identity where it shares the production
// state.
type ConsoleCfg struct {
	// User is the Slack user ID `bot console` acts as when the store is
	// shared (store.backend dynamodb): required there, and /as cannot
	// change it, so nobody approves as somebody else from a shell.
	User string `yaml:"user"`
}

type AWS struct {
	// Region overrides the SDK's default chain (AWS_REGION, profile, IMDS).
	Region string `yaml:"region"`
	// KMSKeyARNs are the customer-managed KMS keys that encrypt the
	// Services box's volumes and snapshots or the tarball bucket. Only
	// `bot iam-policy` reads them: the policy lets EC2 and S3 use exactly
	// these keys on the bot's behalf.
	KMSKeyARNs []string `yaml:"kms_key_arns"`
}

// OpsCfg says how approved operations act on AWS.
type OpsCfg struct {
	// RoleARN, when set, is the IAM role every approved operation's AWS
	// calls run under: a role session per operation whose SourceIdentity
	// is the requester's Slack ID and whose session tags name the approver
	// and the operation, so that CloudTrail names the people behind each
	// call. Empty: operations use the bot's own credentials.
	RoleARN string `yaml:"role_arn"`
}

type Slack struct {
	Command         string   `yaml:"command"`
	AllowedChannels []string `yaml:"allowed_channels"`
	ReportChannel   string   `yaml:"report_channel"`
}

type Roles struct {
	Viewers   []string `yaml:"viewers"`
	Operators []string `yaml:"operators"`
	Approvers []string `yaml:"approvers"`
}

type Approvals struct {
	TTL Duration `yaml:"ttl"`
	// Channel, when set, is where every approval request is shown too
	// (its full plan, with the buttons) and may be decided, besides the
	// channel it was requested in. Decisions anywhere else are refused.
	Channel string `yaml:"channel"`
}

type ServicesBox struct {
	NameTag string `yaml:"name_tag"`
	// RoleARN is the IAM role of the Services box's instance profile,
	// which a restore passes to the new box (iam:PassRole). Only `bot
	// iam-policy` reads it.
	RoleARN string `yaml:"role_arn"`
	// AppStartCommand and AppStopCommand run on the box through SSM (the
	// seed's `replicated app <id> start`); empty skips the step and says so.
	AppStartCommand string `yaml:"app_start_command"`
	AppStopCommand  string `yaml:"app_stop_command"`
}

// Restore tunes restores from snapshots.
type Restore struct {
	// FallbackInstanceTypes are tried in order when AWS has no capacity
	// for the recorded type (InsufficientInstanceCapacity).
	FallbackInstanceTypes []string `yaml:"fallback_instance_types"`
	// ImageTimeout bounds the wait for the AMI to become available.
	ImageTimeout Duration `yaml:"image_timeout"`
	// StopTimeout is how long a normal stop may take before a forced one.
	StopTimeout Duration `yaml:"stop_timeout"`
	// HealthTimeout bounds the wait for running + status checks + SSM.
	HealthTimeout Duration `yaml:"health_timeout"`
}

// Replica is the cold standby a failover promotes, and how `replica
// build` and `replica refresh` make it.
type Replica struct {
	NameTag string `yaml:"name_tag"`
	// Subnet is where `replica build` and `replica refresh` launch the
	// replica (a subnet of the Services box's VPC, best in another zone);
	// --subnet overrides it. Empty: build refuses without --subnet, and a
	// refresh uses the old replica's subnet.
	Subnet string `yaml:"subnet"`
	// Retire is what a refresh does with the old replica once the new one
	// runs: stop (kept, renamed <name_tag>-retired) or terminate.
	Retire string `yaml:"retire"`
	// MaxAge: status and the report warn about a replica older than this
	// (0: only the box's changes count).
	MaxAge Duration `yaml:"max_age"`
	// ImageReboot: the image of the box is made with a reboot (EC2's
	// default, file-system consistent, minutes of downtime); false, the
	// default, makes it without one (NoReboot: no downtime, crash-
	// consistent like a power cut).
	ImageReboot bool `yaml:"image_reboot"`
	// ImageTimeout bounds the wait for the box's image.
	ImageTimeout Duration `yaml:"image_timeout"`
	// ReplicationCheckCommand runs on the replica through SSM before a
	// failover, in status and in the report: it prints "in sync", or the
	// seconds the replica is behind (a number), or exits non-zero.
	ReplicationCheckCommand string `yaml:"replication_check_command"`
	// MaxLag is how far behind (seconds the check prints) still counts
	// as in sync: an asynchronous replica under load reads a fraction of
	// a second behind even when healthy, and with
	// failover.require_in_sync every failover would need --force-stale.
	// Zero: only "in sync" or 0 is.
	MaxLag Duration `yaml:"max_lag"`
}

type Builders struct {
	// ASGName is the Auto Scaling group of the builder fleet; empty means
	// the bot does not manage builders.
	ASGName string `yaml:"asg_name"`
	// RotateBatch is how many builders a rotation replaces at a time (0: a
	// quarter of the fleet); the group needs that much room above its
	// desired capacity.
	RotateBatch int `yaml:"rotate_batch"`
	// RotateTimeout bounds the wait for one batch's new builders.
	RotateTimeout Duration `yaml:"rotate_timeout"`
}

// Failover says how builders find the Services box and how to check the
// promoted replica.
type Failover struct {
	// Discovery: secondary-ip (move the service IP within its subnet),
	// eni (move a dedicated interface), load-balancer (swap NLB targets),
	// none (builders are restarted with the new IP).
	Discovery       string   `yaml:"discovery"`
	ServiceIP       string   `yaml:"service_ip"`
	ENI             string   `yaml:"eni_id"`
	TargetGroupARNs []string `yaml:"target_group_arns"`
	// HealthURL is fetched by the bot after the app starts; {ip} is the
	// replica's private IP, {service_ip} the service address builders
	// use (secondary-ip, eni), e.g. http://{service_ip}/.
	HealthURL string `yaml:"health_url"`
	// OSAddressCommand configures the service address in the replica's
	// OS after a secondary-ip or eni failover moved it (run through SSM
	// as root; {service_ip}, {prefix}, {mac}, {mode}). Empty: the bot's
	// default for Ubuntu (netplan) and Amazon Linux; "none": not run.
	OSAddressCommand string   `yaml:"os_address_command"`
	StopTimeout      Duration `yaml:"stop_timeout"`
	HealthTimeout    Duration `yaml:"health_timeout"`
	// RequireInSync refuses a failover to a replica that
	// replica.replication_check_command does not find in sync, unless
	// --force-stale is given.
	RequireInSync bool `yaml:"require_in_sync"`
}

// SecretCfg says where `secret` reads CIRCLE_SECRET_PASSPHRASE: Secrets
// Manager when SecretsManagerID is set, else the box's
// `replicated admin get-secret-token` through SSM.
type SecretCfg struct {
	SecretsManagerID string `yaml:"secrets_manager_id"`
}

type Backup struct {
	Method    string    `yaml:"method"`
	Bucket    string    `yaml:"bucket"`
	Schedule  string    `yaml:"schedule"`
	Retention Retention `yaml:"retention"`
	RPO       Duration  `yaml:"rpo"`
}

type Retention struct {
	KeepLast   int `yaml:"keep_last"`
	KeepDaily  int `yaml:"keep_daily"`
	KeepWeekly int `yaml:"keep_weekly"`
}

type Report struct {
	Schedule string `yaml:"schedule"`
}

// Drill configures restore drills: the newest restore point restored
// into an isolated subnet and security group, measured, torn down.
type Drill struct {
	Schedule        string   `yaml:"schedule"`
	SubnetID        string   `yaml:"subnet_id"`
	SecurityGroupID string   `yaml:"security_group_id"`
	InstanceType    string   `yaml:"instance_type"` // empty: the recorded type
	HealthURL       string   `yaml:"health_url"`    // {ip}: the drill instance's IP
	Timeout         Duration `yaml:"timeout"`
}

// Monitor configures outage detection from CloudWatch.
type Monitor struct {
	Interval Duration `yaml:"interval"` // 0: off
	// Channel gets alerts and recovery notices; default slack.report_channel.
	Channel  string   `yaml:"channel"`
	Cooldown Duration `yaml:"cooldown"`
	// Checks replace the defaults when given.
	Checks []Check `yaml:"checks"`
}

// Check is one CloudWatch metric compared with a threshold. Dimensions
// may say {box} (the Services box's instance ID) or {asg} (the builder
// group).
type Check struct {
	Name       string            `yaml:"name"`
	Namespace  string            `yaml:"namespace"`
	Metric     string            `yaml:"metric"`
	Dimensions map[string]string `yaml:"dimensions"`
	Stat       string            `yaml:"stat"`      // Average, Maximum, Minimum, Sum
	Op         string            `yaml:"op"`        // ">" or "<"
	Threshold  float64           `yaml:"threshold"` // alert beyond this
	Clear      float64           `yaml:"clear"`     // recovered when back past this (hysteresis)
	For        int               `yaml:"for"`       // consecutive periods beyond the threshold
	Period     Duration          `yaml:"period"`
	Action     string            `yaml:"action"` // the command its alert's button proposes, e.g. "failover"
}

// Defaults are what an empty file means. They are safe: no schedule runs and
// nothing destructive is pre-approved until the file says so.
func Defaults() Config {
	return Config{
		Listen:    ":8080",
		DataDir:   "data",
		Store:     StoreCfg{Backend: "bbolt", Table: "circlebot-state", HeartbeatTTL: Duration(30 * time.Second), LeaseTTL: Duration(30 * time.Second)},
		Slack:     Slack{Command: "/circleci"},
		Approvals: Approvals{TTL: Duration(30 * time.Minute)},
		ServicesBox: ServicesBox{NameTag: "circleci_services",
			AppStartCommand: DefaultAppCommand("start"), AppStopCommand: DefaultAppCommand("stop")},
		Failover: Failover{Discovery: "secondary-ip", StopTimeout: Duration(2 * time.Minute), HealthTimeout: Duration(10 * time.Minute)},
		Builders: Builders{RotateTimeout: Duration(15 * time.Minute)},
		Drill:    Drill{Timeout: Duration(2 * time.Hour)},
		Replica:  Replica{Retire: "stop", ImageTimeout: Duration(45 * time.Minute)},
		Monitor:  Monitor{Interval: Duration(time.Minute), Cooldown: Duration(10 * time.Minute)},
		Restore:  Restore{ImageTimeout: Duration(45 * time.Minute), StopTimeout: Duration(5 * time.Minute), HealthTimeout: Duration(20 * time.Minute)},
		Backup:   Backup{Method: "ebs", RPO: Duration(24 * time.Hour)},
		Metrics:  MetricsCfg{Listen: DefaultMetricsListen},
	}
}

// DefaultMetricsListen keeps /metrics on this host unless the file says
// otherwise.
const DefaultMetricsListen = "127.0.0.1:9090"

// DefaultAppCommand is `replicated app <id> <verb>` with the ID read from
// `replicated apps` (first column of the first app row), so that it works
// on any installation without configuring the app ID.
func DefaultAppCommand(verb string) string {
	return `replicated app "$(replicated apps | awk 'NR==2 {print $1}')" ` + verb
}

// Load reads path, applies defaults under it, reads secrets from env, and
// validates. A *ValidationError lists every problem, each naming its key.
func Load(path string, env func(string) string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: read %s: %w", path, err)
	}
	cfg, err := Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("config: %s: %w", path, err)
	}
	cfg.Secrets = SecretsFromEnv(env)
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML over Defaults. Unknown keys are errors: a typo such as
// `aprovers:` must not silently leave a safety setting at its default.
func Parse(raw []byte) (Config, error) {
	cfg := Defaults()
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil
		}
		return Config{}, fmt.Errorf("not valid YAML: %w", err)
	}
	if probs := unknownKeys(&root, &cfg); len(probs) > 0 {
		return Config{}, &ValidationError{Problems: probs}
	}
	if err := root.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("not valid config: %w", err)
	}
	return cfg, nil
}

// Duration is a time.Duration written as "30m" or "24h" in YAML.
type Duration time.Duration

func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as \"30m\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. \"30m\", \"24h\")", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }
