// Package app wires the bot together from a config: store, AWS clients,
// policy, dispatch table, Slack transports and the HTTP endpoints. The
// binary, the console and the end-to-end tests all build the bot here, so
// what is tested is what runs.
package app

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwschemas "github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/slack-go/slack/socketmode"

	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/authz"
	"github.com/circlebot/circlebot/internal/awsclient"
	"github.com/circlebot/circlebot/internal/bot"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/kv"
	"github.com/circlebot/circlebot/internal/leader"
	"github.com/circlebot/circlebot/internal/metrics"
	"github.com/circlebot/circlebot/internal/monitor"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/schedule"
	"github.com/circlebot/circlebot/internal/slackcreds"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/store"
)

// ShutdownGrace is how long a stopping bot lets operations finish before
// cancelling them (Kubernetes and ECS give 30 s by default).
const ShutdownGrace = 20 * time.Second

type Options struct {
	Config  config.Config
	Version string
	Log     *slog.Logger
	// AWS overrides the SDK's default chain (tests point it at moto).
	AWS *aws.Config
	// SSMEndpoint sends Systems Manager calls elsewhere (tests: a stand-in
	// that really runs the commands; the SDK's AWS_ENDPOINT_URL_SSM does
	// the same from the environment).
	SSMEndpoint string
	// Console: this process is an operator's console, not a replica
	// (status does not count it as one).
	Console bool
}

type App struct {
	Config    config.Config
	Version   string
	Log       *slog.Logger
	Bot       *bot.Bot
	Store     *store.Store
	Metrics   *metrics.Metrics
	Backups   *bot.Backups
	Approvals *bot.Approvals
	// Engine runs every journaled operation; the ops objects below are
	// what its kinds act with (tests tune their intervals).
	Engine   *engine.Engine
	Journal  journal.Store
	Snapshot *ops.SnapshotRestore
	Tarball  *ops.TarballRestore // nil: backup.bucket unset
	Failover *ops.Failover
	Builders *ops.Builders // nil: builders.asg_name unset
	Reports  *bot.Reports
	Drills   *bot.DrillService
	// Doctor checks whether a recovery would work now.
	Doctor *bot.Doctor
	// Monitor is outage detection; Serve runs it when it has a channel.
	Monitor *monitor.Monitor
	// Leader is this replica's bid to run scheduled work, outage
	// detection and the watch for dead replicas (nil: the only replica).
	Leader *leader.Elector
	// Grace overrides ShutdownGrace (tests).
	Grace  time.Duration
	bgDone chan struct{} // closed when the leadership loop has ended

	// SlackKeys are the Slack tokens in force: the environment's, or
	// those of the Secrets Manager secret SLACK_SECRET_ARN (slackSecret),
	// read again on ReloadSlack and when Slack rejects one.
	SlackKeys   slackio.Keys
	slackSecret *slackcreds.Source

	// ScheduleClock replaces the scheduler's clock (tests of what falls
	// due when; the cron itself keeps real time).
	ScheduleClock func() time.Time
}

// New builds the bot. The caller must Close it.
func New(ctx context.Context, o Options) (*App, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := metrics.New()
	count := func(service, op, code string) { m.AWSErrors.WithLabelValues(service, op, code).Inc() }
	var awsCfg aws.Config
	if o.AWS != nil {
		awsCfg = o.AWS.Copy()
		awsclient.Instrument(&awsCfg, count)
	} else {
		var err error
		if awsCfg, err = awsclient.Load(ctx, o.Config.AWS.Region, count); err != nil {
			return nil, err
		}
	}
	var keys slackio.Keys = slackio.StaticKeys(o.Config.Secrets)
	var slackSecret *slackcreds.Source
	if arn := o.Config.Secrets.SecretARN; arn != "" {
		// With the bot's own credentials, in the secret's region (which
		// its ARN names; it may differ from aws.region).
		sm := secretsmanager.NewFromConfig(awsCfg, func(so *secretsmanager.Options) {
			if r := arnRegion(arn); r != "" {
				so.Region = r
			}
		})
		slackSecret = slackcreds.New(sm, arn, o.Config.Secrets, o.Log)
		if err := slackSecret.Load(ctx); err != nil {
			return nil, err
		}
		keys = slackSecret
	}
	st, elector, err := openStore(ctx, o.Config, awsCfg, o.Log, o.Console)
	if err != nil {
		return nil, err
	}
	// From here on, the calls of an approved operation's steps run in a
	// role session naming its requester and approver (the engine marks
	// their context); every other call keeps the bot's own credentials.
	// The store above keeps them always.
	if role := o.Config.Ops.RoleARN; role != "" {
		awsCfg = awsclient.WithOperationRole(awsCfg, role)
		o.Log.Info("approved operations act on AWS through a role session per operation", "role", role)
	}
	cfg := o.Config
	policy := authz.New(cfg.Roles, cfg.Slack.AllowedChannels)
	status := &ops.Status{
		EC2: ec2.NewFromConfig(awsCfg),
		ASG: autoscaling.NewFromConfig(awsCfg),
		Target: ops.Target{
			Region:     awsCfg.Region,
			NameTag:    cfg.ServicesBox.NameTag,
			ReplicaTag: cfg.Replica.NameTag,
			BuilderASG: cfg.Builders.ASGName,
			RPO:        cfg.Backup.RPO.D(),

			ReplicaMaxAge: cfg.Replica.MaxAge.D(),
		},
		Records: ops.Records{Store: st}.Backups,
	}
	ec2c := ec2.NewFromConfig(awsCfg)
	ssmc := ssm.NewFromConfig(awsCfg, func(so *ssm.Options) {
		if o.SSMEndpoint != "" {
			so.BaseEndpoint = aws.String(o.SSMEndpoint)
		}
	})
	records := ops.Records{Store: st}
	retention := ops.Policy{KeepLast: cfg.Backup.Retention.KeepLast, KeepDaily: cfg.Backup.Retention.KeepDaily, KeepWeekly: cfg.Backup.Retention.KeepWeekly}
	backups := &bot.Backups{
		EBS: &ops.EBSBackup{
			EC2: ec2c, Records: records, NameTag: cfg.ServicesBox.NameTag, Version: o.Version,
			Retry: 2 * time.Second, Attempts: 6,
		},
		Records:       records,
		EC2:           ec2c,
		Policy:        retention,
		ReportChannel: cfg.Slack.ReportChannel,
		Log:           o.Log,
	}
	var s3c *s3.Client
	if cfg.Backup.Bucket != "" {
		s3c = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
			// A custom endpoint (moto, MinIO, a VPC endpoint by IP) cannot
			// take the bucket as a host name.
			o.UsePathStyle = awsCfg.BaseEndpoint != nil
		})
		backups.Tarball = &ops.TarballBackup{
			EC2: ec2c, S3: s3c, Presign: s3.NewPresignClient(s3c),
			SSM:     ssmc,
			Records: records, NameTag: cfg.ServicesBox.NameTag, Bucket: cfg.Backup.Bucket,
			Prefix: "circleci-backups/", Version: o.Version,
		}
	}
	quotas := servicequotas.NewFromConfig(awsCfg)
	snapshot := &ops.SnapshotRestore{
		EC2: ec2c, Types: ec2c, Quotas: quotas, SSM: ssmc, Records: records, NameTag: cfg.ServicesBox.NameTag, Region: awsCfg.Region,
		Fallbacks: cfg.Restore.FallbackInstanceTypes, AppStart: cfg.ServicesBox.AppStartCommand,
		ImageTimeout: cfg.Restore.ImageTimeout.D(), StopTimeout: cfg.Restore.StopTimeout.D(), HealthTimeout: cfg.Restore.HealthTimeout.D(),
	}
	var tarball *ops.TarballRestore
	var tarballKind engine.TarballRestorer // a nil *ops.TarballRestore is not a nil interface
	if s3c != nil {
		tarball = &ops.TarballRestore{
			EC2: ec2c, S3: s3c, Presign: s3.NewPresignClient(s3c), SSM: ssmc, NameTag: cfg.ServicesBox.NameTag, Region: awsCfg.Region,
			AppStart: cfg.ServicesBox.AppStartCommand, AppStop: cfg.ServicesBox.AppStopCommand,
			Records: records,
		}
		tarballKind = tarball
	}
	var lag *ops.LagCheck
	if c := cfg.Replica.ReplicationCheckCommand; c != "" {
		lag = &ops.LagCheck{SSM: ssmc, Command: c, MaxLag: cfg.Replica.MaxLag.D()}
		status.Lag = lag.Check
	}
	failover := &ops.Failover{
		Lag: lag, RequireInSync: cfg.Failover.RequireInSync,
		EC2: ec2c, ELB: elasticloadbalancingv2.NewFromConfig(awsCfg), SSM: ssmc, NameTag: cfg.ServicesBox.NameTag, ReplicaTag: cfg.Replica.NameTag, Region: awsCfg.Region,
		Discovery: cfg.Failover.Discovery, ServiceIP: cfg.Failover.ServiceIP, ENI: cfg.Failover.ENI, TargetGroups: cfg.Failover.TargetGroupARNs,
		AppStart: cfg.ServicesBox.AppStartCommand, HealthURL: cfg.Failover.HealthURL, OSAddressCommand: cfg.Failover.OSAddressCommand,
		StopTimeout: cfg.Failover.StopTimeout.D(), HealthTimeout: cfg.Failover.HealthTimeout.D(),
	}
	var builders *ops.Builders
	if cfg.Builders.ASGName != "" {
		builders = &ops.Builders{ASG: autoscaling.NewFromConfig(awsCfg), Group: cfg.Builders.ASGName, Batch: cfg.Builders.RotateBatch, Timeout: cfg.Builders.RotateTimeout.D()}
		failover.Builders = builders
	}
	passphrase := &ops.Passphrase{EC2: ec2c, SSM: ssmc, SM: secretsmanager.NewFromConfig(awsCfg), SecretID: cfg.Secret.SecretsManagerID, NameTag: cfg.ServicesBox.NameTag}
	// The one table of operation kinds: adding an operation is one line
	// here and one kind in internal/engine.
	setup := engine.Setup{SlashCommand: cfg.Slack.Command, NameTag: cfg.ServicesBox.NameTag, EC2: ec2c, RetryWait: func() time.Duration { return snapshot.Poll }, Journal: journal.Store{KV: st.KV()}}
	kinds := &engine.Registry{}
	engine.Register(kinds, engine.RestoreEBS(setup, snapshot))
	engine.Register(kinds, engine.RestoreTarball(setup, tarballKind))
	engine.Register(kinds, engine.Failover(setup, failover))
	engine.Register(kinds, engine.Reboot(setup, journal.Store{KV: st.KV()}, &ops.Reboot{EC2: ec2c, SSM: ssmc, NameTag: cfg.ServicesBox.NameTag, Region: awsCfg.Region, AppStart: cfg.ServicesBox.AppStartCommand, HealthURL: cfg.Failover.HealthURL, Pace: setup.RetryWait, HealthTimeout: cfg.Failover.HealthTimeout.D()}))
	engine.Register(kinds, engine.Resize(setup, journal.Store{KV: st.KV()}, &ops.Resize{EC2: ec2c, Quotas: quotas, SSM: ssmc, NameTag: cfg.ServicesBox.NameTag, Region: awsCfg.Region, AppStart: cfg.ServicesBox.AppStartCommand, HealthURL: cfg.Failover.HealthURL, Pace: setup.RetryWait, StopTimeout: cfg.Restore.StopTimeout.D(), HealthTimeout: cfg.Failover.HealthTimeout.D()}))
	replicas := &ops.Replicas{
		EC2: ec2c, NameTag: cfg.ServicesBox.NameTag, ReplicaTag: cfg.Replica.NameTag, Region: awsCfg.Region,
		Subnet: cfg.Replica.Subnet, Retire: cfg.Replica.Retire, ImageReboot: cfg.Replica.ImageReboot, Pace: setup.RetryWait,
		ImageTimeout: cfg.Replica.ImageTimeout.D(), Timeout: cfg.Failover.HealthTimeout.D(),
	}
	engine.Register(kinds, engine.ReplicaBuild(setup, replicas))
	engine.Register(kinds, engine.ReplicaRefresh(setup, replicas))
	engine.Register(kinds, engine.Rotate(setup, builders))
	engine.Register(kinds, engine.Prune(setup, engine.Retention{EC2: ec2c, Prune: ec2c, Records: records.Backups, Mark: records.MarkPruning, Policy: retention}))
	engine.Register(kinds, engine.Secret(setup, passphrase))
	backupKinds := engine.Backups{EBS: backups.EBS, Tarball: backups.Tarball, Records: records, DefaultMethod: cfg.Backup.Method}
	engine.Register(kinds, engine.BackupEBS(setup, backupKinds))
	engine.Register(kinds, engine.BackupTarball(setup, backupKinds))
	drillRunner := &ops.DrillRunner{
		EC2: ec2c, Restore: snapshot, Records: ops.Drills{Store: st},
		Subnet: cfg.Drill.SubnetID, SecurityGroup: cfg.Drill.SecurityGroupID, InstanceType: cfg.Drill.InstanceType,
		HealthURL: cfg.Drill.HealthURL, Timeout: cfg.Drill.Timeout.D(), Process: st.Process(),
	}
	engine.Register(kinds, engine.Drill(setup, drillRunner, drillRunner.Records))
	if err := kinds.Check(); err != nil {
		st.Close()
		return nil, err
	}
	apStore := approvals.Store{KV: st.KV()}
	eng := &engine.Engine{
		Kinds: kinds, Journal: journal.Store{KV: st.KV()}, Store: st, Approvals: &apStore,
		EC2: ec2c, NameTag: cfg.ServicesBox.NameTag, SlashCommand: cfg.Slack.Command, Log: o.Log,
		ApprovalTTL: cfg.Approvals.TTL.D(), RoleSessions: cfg.Ops.RoleARN != "",
	}
	backups.Engine = eng
	reports := &bot.Reports{
		EC2: ec2c, Prune: ec2c, Records: records, Drills: ops.Drills{Store: st}, Policy: backups.Policy,
		Schedule: cfg.Backup.Schedule, RPO: cfg.Backup.RPO.D(), SlashCommand: cfg.Slack.Command, Log: o.Log,
		Replica: func(ctx context.Context) []string { return bot.ReplicaReportLines(ctx, status) },
		RTO:     func(ctx context.Context) []string { return engine.RTOReportLines(ctx, eng.Journal) },
	}
	drills := &bot.DrillService{Runner: drillRunner, Engine: eng}
	checks := cfg.Monitor.Checks
	if len(checks) == 0 {
		checks = monitor.DefaultChecks(cfg.Builders.ASGName != "")
	}
	mon := &monitor.Monitor{
		CW: cloudwatch.NewFromConfig(awsCfg, func(o *cloudwatch.Options) {
			// CloudWatch serves the query protocol as well as the SDK's
			// default CBOR; moto (what the tests and the demo run against)
			// speaks only query, and the bot should talk to AWS as it is
			// tested.
			o.Protocol = awsquery.New(cwschemas.GraniteServiceVersion20100801)
		}), EC2: ec2c, Store: st, Checks: checks, NameTag: cfg.ServicesBox.NameTag, ASG: cfg.Builders.ASGName, ASGAPI: autoscaling.NewFromConfig(awsCfg),
		Cooldown: cfg.Monitor.Cooldown.D(), Slash: cfg.Slack.Command, Log: o.Log,
	}
	doctor := &bot.Doctor{Status: status, EC2: ec2c, SSM: ssmc, Bucket: cfg.Backup.Bucket, Engine: eng,
		Rotation: builders != nil, Replicas: replicasCheck(st, elector), SlashCommand: cfg.Slack.Command,
		KMSKeys: cfg.AWS.KMSKeyARNs, KMS: kms.NewFromConfig(awsCfg), Volumes: func(ctx context.Context) ([]ops.VolumeSpec, error) {
			box, err := ops.FindBox(ctx, ec2c, cfg.ServicesBox.NameTag)
			if err != nil {
				return nil, err
			}
			specs, _, err := ops.BoxVolumes(ctx, ec2c, box)
			return specs, err
		}}
	if s3c != nil {
		doctor.S3 = s3c
	}
	reports.Doctor, reports.Readiness = doctor, st
	apr := &bot.Approvals{Store: apStore, TTL: cfg.Approvals.TTL.D(), Process: st.Process(), Channel: cfg.Approvals.Channel}
	b, err := bot.New(bot.Options{
		SlashCommand: cfg.Slack.Command,
		Policy:       policy,
		Audit:        st,
		Count:        func(cmd, outcome string) { m.Commands.WithLabelValues(cmd, outcome).Inc() },
		Log:          o.Log,
		Handlers: bot.Handlers(bot.Deps{
			SlashCommand: cfg.Slack.Command,
			Version:      o.Version,
			Policy:       policy,
			Audit:        st,
			Status:       status,
			Backups:      backups,
			RPO:          cfg.Backup.RPO.D(),
			Approvals:    apr,
			Engine:       eng,
			Builders:     builders,
			Reports:      reports,
			Drills:       drills,
			Replicas:     replicasLine(st, elector),
			Doctor:       doctor,
			Log:          o.Log,
		}),
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	return &App{Config: cfg, Version: o.Version, Log: o.Log, Bot: b, Store: st, Metrics: m, Backups: backups, Approvals: apr,
		Engine: eng, Journal: eng.Journal, Snapshot: snapshot, Tarball: tarball, Failover: failover, Builders: builders,
		Reports: reports, Drills: drills, Monitor: mon, Leader: elector, SlackKeys: keys, slackSecret: slackSecret, Doctor: doctor}, nil
}

// ReloadSlack reads the Slack secret again (SIGHUP): after a rotation in
// Secrets Manager the next call to Slack uses the new tokens and requests
// are verified with the new signing secret, without a restart. Tokens from
// the environment cannot change while the bot runs.
func (a *App) ReloadSlack(ctx context.Context) {
	if a.slackSecret == nil {
		a.Log.Info("reload asked for: the Slack tokens come from the environment, nothing to reload (set SLACK_SECRET_ARN to rotate without a restart)")
		return
	}
	a.slackSecret.Reload(ctx)
}

// arnRegion is the region field of an ARN ("" if it has none).
func arnRegion(arn string) string {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) < 6 {
		return ""
	}
	return parts[3]
}

// openStore opens the state store the config names: the bbolt file, or
// the shared DynamoDB table (created if missing) with this replica's
// heartbeat and its bid for leadership.
func openStore(ctx context.Context, cfg config.Config, awsCfg aws.Config, log *slog.Logger, console bool) (*store.Store, *leader.Elector, error) {
	if cfg.Store.Backend != "dynamodb" {
		st, err := store.Open(cfg.DataDir)
		return st, nil, err
	}
	table := kv.Dynamo{API: dynamodb.NewFromConfig(awsCfg), Table: cfg.Store.Table}
	if err := table.EnsureTable(ctx); err != nil {
		return nil, nil, fmt.Errorf("store: DynamoDB table %s: %w", cfg.Store.Table, err)
	}
	name := cfg.Store.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	role := ""
	if console {
		role = store.RoleConsole
	}
	st, err := store.OpenShared(ctx, table, store.SharedOptions{TTL: cfg.Store.HeartbeatTTL.D(), Name: name, Role: role, Log: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info("state shared in DynamoDB", "table", cfg.Store.Table, "replica", name, "process", st.Process())
	el := &leader.Elector{
		Lease: kv.Lease{Store: st.KV(), Table: "leases", Name: "leader", Holder: st.Process(), TTL: cfg.Store.LeaseTTL.D()},
		Log:   log,
	}
	return st, el, nil
}

// replicasLine says, in status, which bot replicas are alive and which
// leads (nil with one replica).
func replicasLine(st *store.Store, el *leader.Elector) func(context.Context) string {
	if el == nil {
		return nil
	}
	return func(ctx context.Context) string {
		reps, err := st.Replicas(ctx)
		if err != nil {
			return ":warning: Bot replicas: cannot read the shared state: " + err.Error()
		}
		holder, _, _ := el.Lease.Current(ctx)
		return describeReplicas(reps, func(p string) bool { return st.Alive(ctx, p) }, holder, st.Process())
	}
}

// describeReplicas is status's line about the live replicas: which leads,
// which answers, and the consoles attached (not replicas: they serve no
// Slack and never lead).
func describeReplicas(reps []store.Replica, alive func(process string) bool, holder, me string) string {
	var replicas, consoles []string
	for _, r := range reps {
		if !alive(r.Process) {
			continue
		}
		s := "`" + r.Name + "`"
		if r.Process == holder {
			s += " (leader)"
		}
		if r.Process == me {
			s += " (answering)"
		}
		if r.Role == store.RoleConsole {
			consoles = append(consoles, s)
			continue
		}
		replicas = append(replicas, s)
	}
	line := fmt.Sprintf("Bot replicas alive: %s; state shared in DynamoDB.", strings.Join(replicas, ", "))
	if len(consoles) > 0 {
		line += fmt.Sprintf(" Consoles attached: %s.", strings.Join(consoles, ", "))
	}
	if holder == "" {
		line += " :warning: No leader at the moment: scheduled work waits for one (up to the lease TTL)."
	}
	if len(replicas) < 2 {
		line += " :warning: Only one replica is alive: an outage of its zone takes the bot down."
	}
	return line
}

// replicasCheck is the doctor's line on the bot's replicas: at least two
// alive (heartbeats) and one holding the lease (nil with one replica).
func replicasCheck(st *store.Store, el *leader.Elector) func(context.Context) bot.DoctorCheck {
	if el == nil {
		return nil
	}
	return func(ctx context.Context) bot.DoctorCheck {
		const name = "Bot replicas"
		reps, err := st.Replicas(ctx)
		if err != nil {
			return bot.DoctorCheck{Name: name, Verdict: bot.VerdictFail, Detail: "cannot read the shared state: " + err.Error(), Fix: "check the DynamoDB table (store.table) and the bot's SharedState permissions"}
		}
		holder, _, err := el.Lease.Current(ctx)
		if err != nil {
			return bot.DoctorCheck{Name: name, Verdict: bot.VerdictFail, Detail: "cannot read the lease: " + err.Error(), Fix: "check the DynamoDB table (store.table)"}
		}
		var alive []string
		leader := ""
		for _, r := range reps {
			if st.Alive(ctx, r.Process) {
				alive = append(alive, r.Name)
				if r.Process == holder {
					leader = r.Name
				}
			}
		}
		detail := fmt.Sprintf("%d alive (%s)", len(alive), strings.Join(alive, ", "))
		switch {
		case leader == "":
			return bot.DoctorCheck{Name: name, Verdict: bot.VerdictFail, Detail: detail + "; no replica holds the lease, so scheduled backups and outage detection wait", Fix: "check the replicas' logs; a replica takes the lease within store.lease_ttl"}
		case len(alive) < 2:
			return bot.DoctorCheck{Name: name, Verdict: bot.VerdictWarn, Detail: detail + ", leader " + leader + "; an outage of its zone takes the bot down", Fix: "run a second replica in another zone"}
		}
		return bot.DoctorCheck{Name: name, Verdict: bot.VerdictOK, Detail: detail + ", leader " + leader, Fix: ""}
	}
}

func (a *App) Close() error { return a.Store.Close() }

// Crash stops this replica's heartbeat and lease renewal without giving
// either up, as a killed process would; the other replicas notice when
// they expire. For tests and failure drills.
func (a *App) Crash() {
	if a.Leader != nil {
		a.Leader.Kill()
	}
	a.Store.Kill()
}

// Server is the Slack-facing part of a running bot.
type Server struct {
	app    *App
	web    *slackio.Web
	pool   *slackio.Pool
	handle http.Handler
	api    *backupAPI // nil: BOT_API_TOKEN unset
}

// NewServer makes the Slack transports. ctx bounds the background work of
// acknowledged requests.
func (a *App) NewServer(ctx context.Context) *Server {
	sec := a.Config.Secrets
	web := slackio.NewWeb(sec.BotToken.Reveal(), sec.APIURL, a.Log)
	var keys slackio.Keys // nil: the environment's, fixed
	if a.slackSecret != nil {
		keys = a.slackSecret
		web = slackio.NewWebWith(keys, sec.APIURL, a.Log)
		sec = keys.Slack()
	}
	s := &Server{app: a, web: web}
	// The report's doctor alerts the monitor channel when a recovery
	// would no longer work.
	a.Reports.Alert = func(ctx context.Context, text string) error {
		ch := a.MonitorChannel()
		if ch == "" {
			return nil
		}
		_, err := web.For(chat.Request{ChannelID: ch}).Post(ctx, chat.Text(text))
		return err
	}
	s.pool = slackio.NewPool(ctx, 32, func(ctx context.Context, req chat.Request) {
		a.Bot.Handle(ctx, req, web.For(req))
	})
	mux := http.NewServeMux()
	h := &slackio.HTTP{
		Secret:  sec.SigningSecret,
		Keys:    keys,
		Submit:  s.pool.Submit,
		Dedupe:  a.dedupe(),
		Metrics: a.Metrics,
		Log:     a.Log,
	}
	// Without a signing secret (Socket Mode only) the HTTP Slack endpoints
	// are not served at all: nothing could tell Slack from a forger.
	if !sec.SigningSecret.Empty() {
		h.Register(mux)
	}
	mux.HandleFunc("GET /healthz", a.healthz)
	// The backup API, only with a token to require: this listener is
	// public in HTTP mode.
	if tok := sec.APIToken; !tok.Empty() {
		s.api = &backupAPI{
			token: sha256.Sum256([]byte(tok.Reveal())), backups: a.Backups, method: cmp.Or(a.Config.Backup.Method, ops.MethodEBS), kv: a.Store.KV(), audit: a.Store,
			channel: a.Config.Slack.ReportChannel, heldText: a.Engine.HeldMessage, log: a.Log, work: ctx,
			postTo: func(channel string) progress.Poster { return web.For(chat.Request{ChannelID: channel}) },
		}
		mux.HandleFunc("POST /api/v1/backups", s.api.post)
		mux.HandleFunc("GET /api/v1/backups/{id}", s.api.get)
	}
	// Nothing else: this listener must be public in HTTP mode, and the
	// metrics (command counts, AWS error codes) are served apart, by
	// MetricsHandler on metrics.listen.
	s.handle = mux
	return s
}

// MetricsHandler serves GET /metrics and nothing else, for the listener
// of its own (metrics.listen). With BOT_METRICS_TOKEN set, a request must
// carry it as a bearer token.
func (a *App) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	h := a.Metrics.Handler()
	if tok := a.Config.Secrets.MetricsToken; !tok.Empty() {
		h = bearer(tok.Reveal(), h)
	}
	mux.Handle("GET /metrics", h)
	return mux
}

// bearer lets through requests with "Authorization: Bearer <token>". The
// comparison is of SHA-256 digests in constant time: neither the token
// nor its length shows in the time an answer takes.
func bearer(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 || !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="circlebot metrics"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) Handler() http.Handler { return s.handle }

// Wait blocks until every acknowledged request has been answered, and
// every backup the API started has ended.
func (s *Server) Wait() {
	s.pool.Wait()
	if s.api != nil {
		s.api.running.Wait()
	}
}

func (a *App) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	// The store is the one local dependency whose loss breaks the bot.
	if err := a.Store.Ping(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "store unavailable"})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok", "version": a.Version})
}

// Listeners are where a serving bot answers.
type Listeners struct {
	// Slack is `listen`: Slack's endpoints and /healthz, nothing else
	// (public in HTTP mode).
	Slack net.Listener
	// Metrics is `metrics.listen`: GET /metrics alone; nil: not served.
	Metrics net.Listener
}

// Listen opens the listeners the config names; errors name the key.
func (a *App) Listen() (Listeners, error) {
	var ls Listeners
	var err error
	if ls.Slack, err = net.Listen("tcp", a.Config.Listen); err != nil {
		return Listeners{}, fmt.Errorf("listen: %s: %w", a.Config.Listen, err)
	}
	if m := a.Config.Metrics.Listen; m != "" {
		if ls.Metrics, err = net.Listen("tcp", m); err != nil {
			ls.Slack.Close()
			return Listeners{}, fmt.Errorf("metrics.listen: %s: %w", m, err)
		}
	}
	return ls, nil
}

// Serve is ServeAll with the Slack listener alone: /metrics is not
// served.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	return a.ServeAll(ctx, Listeners{Slack: ln})
}

// ServeAll runs the HTTP endpoints (always: health; metrics on their own
// listener when given) and Socket Mode when an app token is set, until
// ctx ends; then it stops taking requests and waits for the ones already
// acknowledged. It closes the listeners.
func (a *App) ServeAll(ctx context.Context, ls Listeners) error {
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	s := a.NewServer(workCtx)
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			ErrorLog:          slog.NewLogLogger(a.Log.Handler(), slog.LevelWarn),
		}
	}
	srv := newServer(s.Handler())
	servers := []*http.Server{srv}
	errc := make(chan error, 3)
	serve := func(srv *http.Server, ln net.Listener, what string) {
		a.Log.Info("listening", "addr", ln.Addr().String(), "serves", what)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http (%s): %w", what, err)
		}
	}
	go serve(srv, ls.Slack, "slack")
	if ls.Metrics != nil {
		msrv := newServer(a.MetricsHandler())
		servers = append(servers, msrv)
		go serve(msrv, ls.Metrics, "metrics")
	}
	postTo := func(channel string) progress.Poster { return s.web.For(chat.Request{ChannelID: channel}) }
	sched, err := a.Background(workCtx, postTo)
	if err != nil {
		for _, srv := range servers {
			srv.Close()
		}
		return err
	}
	sec := a.Config.Secrets
	client := func() *socketmode.Client {
		return slackio.NewSocketClient(sec.BotToken.Reveal(), sec.AppToken.Reveal(), sec.APIURL)
	}
	if a.slackSecret != nil {
		sec = a.slackSecret.Slack()
		client = func() *socketmode.Client { return slackio.NewSocketClientWith(a.slackSecret, sec.APIURL) }
	}
	if !sec.AppToken.Empty() {
		sock := &slackio.Socket{
			Client:  client(),
			Submit:  s.pool.Submit,
			Dedupe:  a.dedupe(),
			Metrics: a.Metrics,
			Log:     a.Log,
		}
		go func() {
			if err := sock.Run(ctx); err != nil {
				errc <- fmt.Errorf("socket mode: %w", err)
			}
		}()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// ctx has ended by now: the HTTP shutdown gets a bound of its own.
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(shutCtx)
	}
	s.pool.Close()
	// Operations get a grace period, then their context ends: a backup
	// records where it is and the next start follows it again, so waiting
	// hours for a snapshot is never what holds a restart up.
	wait := ShutdownGrace
	if a.Grace > 0 {
		wait = a.Grace
	}
	a.Log.Info("waiting for operations in progress", "grace", wait)
	grace := time.AfterFunc(wait, cancelWork)
	defer grace.Stop()
	s.Wait()
	a.Engine.Wait()
	// Then the leader's own loop (the lease is given up here), and what
	// it may have started meanwhile, before the clock stops.
	cancelWork()
	a.WaitBackground()
	a.Engine.Wait()
	sched.Stop()
	return err
}

// Background starts what runs besides Slack's requests: dealing with
// what a previous process left, the clock of scheduled work, the bid for
// leadership (replicas) and outage detection, all until ctx ends. The
// scheduler it returns is stopped by the caller after ctx ends.
func (a *App) Background(ctx context.Context, postTo func(string) progress.Poster) (*schedule.Scheduler, error) {
	sched, err := a.Scheduler(ctx, postTo)
	if err != nil {
		return nil, err
	}
	// The schedule's run records are bookkeeping of the clock, not work:
	// whether the 02:00 slot was started, which CheckMissed reads. A run
	// cut off with its process is said by the scheduler (the report job
	// has nothing else to say it), while the backup or drill the run
	// started is an operation the engine recovers. Both within one
	// recovery: Engine.Recover runs the check after the operations.
	a.Engine.AlsoRecover = []func(context.Context){sched.CheckCutOff}
	a.Resume(ctx, postTo)
	if a.ScheduleClock != nil {
		sched.SetClock(a.ScheduleClock)
	}
	if a.Leader != nil {
		sched.Leader = a.Leader.Leader
		// A run that fell due during a handover is run late by the new
		// leader rather than skipped.
		sched.CatchUp = 2*a.Config.Store.LeaseTTL.D() + time.Minute
		a.Monitor.Leader = a.Leader.Leader
		a.Leader.OnElected = func(lctx context.Context) { a.lead(lctx, ctx, sched, postTo) }
	}
	sched.Start(ctx)
	a.bgDone = make(chan struct{})
	if a.Leader != nil {
		go func() {
			defer close(a.bgDone)
			a.Leader.Run(ctx)
		}()
	} else {
		close(a.bgDone)
	}
	if ch := a.MonitorChannel(); ch != "" && a.Config.Monitor.Interval.D() > 0 {
		a.Monitor.Post = postTo(ch)
		go a.Monitor.Run(ctx, a.Config.Monitor.Interval.D())
	}
	return sched, nil
}

// WaitBackground waits, after Background's context ended, for the
// leadership loop and what it started as leader.
func (a *App) WaitBackground() {
	if a.bgDone != nil {
		<-a.bgDone
	}
}

// lead is the leader's own work besides the clock, for as long as it
// leads (ctx): catch up what fell due in the handover, and keep watching
// for replicas that die with work in hand — operations of every kind
// (a backup is continued, a drill torn down, a restore announced),
// approved requests and schedule runs, all through the engine's one
// recovery. What it starts runs under work, so losing the lease does not
// cut a backup off.
func (a *App) lead(ctx, work context.Context, sched *schedule.Scheduler, postTo func(string) progress.Poster) {
	sched.Elected(ctx)
	every := a.Config.Store.HeartbeatTTL.D() / 2
	t := time.NewTicker(every)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.Engine.Recover(work, postTo)
		if time.Since(lastSweep) > 10*time.Minute {
			lastSweep = time.Now()
			if n, err := a.Store.SweepClaims(work); err != nil {
				a.Log.Warn("sweep old delivery claims", "err", err)
			} else if n > 0 {
				a.Log.Debug("swept old delivery claims", "n", n)
			}
			if n, err := SweepAPIRecords(work, a.Store.KV(), time.Now()); err != nil {
				a.Log.Warn("sweep old backup API records", "err", err)
			} else if n > 0 {
				a.Log.Debug("swept old backup API records", "n", n)
			}
		}
	}
}

// dedupe remembers Slack deliveries: in this process, and across
// replicas when the store is shared.
func (a *App) dedupe() *slackio.Dedupe {
	d := slackio.NewDedupe(10*time.Minute, 100_000)
	if a.Store.Shared() {
		d.Shared, d.Log = a.Store, a.Log
	}
	return d
}

// MonitorChannel is where outage alerts go: monitor.channel, else the
// report channel; empty turns detection off.
func (a *App) MonitorChannel() string {
	if a.Config.Monitor.Channel != "" {
		return a.Config.Monitor.Channel
	}
	return a.Config.Slack.ReportChannel
}

// Scheduler makes the recurring jobs the config asks for. Scheduled work
// reports to slack.report_channel; retention after a scheduled backup is
// pre-approved by having a policy in the config.
func (a *App) Scheduler(ctx context.Context, postTo func(string) progress.Poster) (*schedule.Scheduler, error) {
	report := a.Config.Slack.ReportChannel
	sched := schedule.New(a.Store, func(ctx context.Context, text string) {
		a.Log.Warn("schedule report", "text", text)
		if report == "" {
			return
		}
		if _, err := postTo(report).Post(ctx, chat.Text(text)); err != nil {
			a.Log.Error("post schedule report", "err", err)
		}
	}, a.Log)
	if spec := a.Config.Backup.Schedule; spec != "" {
		err := sched.Add(schedule.Job{Name: "backup", Spec: spec, Run: func(ctx context.Context) error {
			return a.ScheduledBackup(ctx, postTo(report))
		}})
		if err != nil {
			return nil, err
		}
	}
	if spec := a.Config.Report.Schedule; spec != "" {
		err := sched.Add(schedule.Job{Name: "report", Spec: spec, Run: func(ctx context.Context) error {
			return a.Reports.Send(ctx, postTo(report))
		}})
		if err != nil {
			return nil, err
		}
	}
	if spec := a.Config.Drill.Schedule; spec != "" {
		err := sched.Add(schedule.Job{Name: "drill", Spec: spec, Run: func(ctx context.Context) error {
			d, err := a.Drills.Run(ctx, postTo(report), engine.Scheduler, report)
			if err != nil && d != nil {
				return schedule.Reported{Err: err} // its message says it
			}
			return err
		}})
		if err != nil {
			return nil, err
		}
	}
	return sched, nil
}

// ScheduledBackup is one run of the backup schedule: a backup as the
// scheduler, then retention when a policy is configured.
func (a *App) ScheduledBackup(ctx context.Context, poster progress.Poster) error {
	b, err := a.Backups.Run(ctx, poster, bot.BackupRequest{Requester: engine.Scheduler, Channel: a.Config.Slack.ReportChannel})
	var held *store.HeldError
	if errors.As(err, &held) {
		return fmt.Errorf("skipped: %w", err)
	}
	if err != nil {
		if b != nil {
			return schedule.Reported{Err: err}
		}
		return err
	}
	if !a.Backups.Policy.Enabled() {
		return nil
	}
	if err := a.Backups.PruneNow(ctx, poster); err != nil {
		if errors.As(err, &held) {
			return fmt.Errorf("retention skipped: %w", err)
		}
		// PruneNow reported it in the channel; the backup itself succeeded.
		return schedule.Reported{Err: fmt.Errorf("retention after the backup: %w", err)}
	}
	return nil
}

// Resume deals with what a previous bot process left behind, through the
// engine's one recovery: an EBS backup is followed to the end, a tarball
// backup or a drill is cleaned up and reported, a destructive operation
// is reported and waits for a person; none is started again.
func (a *App) Resume(ctx context.Context, postTo func(string) progress.Poster) {
	a.Engine.Recover(ctx, postTo)
}
