package app_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/schedule"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
)

const leaseTTL = 1500 * time.Millisecond

// sharedState puts the bot's state in moto's DynamoDB, with short TTLs.
//
// A replica gives up its work when its heartbeat has not landed for 3/4
// of the heartbeat TTL (renewals every TTL/3, each with TTL/3 to land), and
// the handover is measured against the lease TTL: both are wall-clock
// deadlines that CPU starvation breaks. With a 1 s heartbeat a replica
// lost its heartbeat when other test binaries and moto starts took the
// CPU; 3 s leaves a DynamoDB write 1 s. The tests that use it do not call
// t.Parallel either: other tests of the package running beside them made
// them fail. Non-parallel tests run before the parallel ones, alone in
// the binary.
func sharedState(c *config.Config) {
	c.Store.Backend = "dynamodb"
	c.Store.Table = "circlebot-state"
	c.Store.HeartbeatTTL = config.Duration(3 * time.Second)
	c.Store.LeaseTTL = config.Duration(leaseTTL)
	c.Store.Name = "replica-a"
}

// replica starts a second bot process on the same AWS (moto), the same
// DynamoDB table and the same Slack, with its own AWS proxy and its own
// HTTP endpoint, as a second replica behind the load balancer would be.
func (e *env) replica(opts ...func(*app.Options)) *env {
	t := e.t
	t.Helper()
	proxy := faultproxy.New(e.moto.URL, faultproxy.Faults{})
	t.Cleanup(proxy.Close)
	cfg := e.app.Config
	cfg.Store.Name = "replica-b"
	iamCfg := new(config.Config)
	viaProxy, iamSes := recordedAWS(t, proxy.URL, e.aws, iamCfg)
	ao := app.Options{Config: cfg, Version: "test", AWS: viaProxy, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(&ao)
	}
	*iamCfg = ao.Config
	a, err := app.New(context.Background(), ao)
	if err != nil {
		t.Fatal(err)
	}
	testSpeed(a)
	ctx, cancel := context.WithCancel(context.Background())
	srv := a.NewServer(ctx)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Wait()
		cancel()
		a.Close()
	})
	r := &env{t: t, moto: e.moto, inst: e.inst, aws: e.aws, proxy: proxy, slack: e.slack, app: a, server: srv, http: hs, iamCfg: iamCfg, iamSes: iamSes}
	// Its own trigger IDs: one Slack never reuses them across replicas.
	r.trigger.Store(1_000_000)
	return r
}

// background runs what Serve runs besides Slack: resume, the clock,
// leadership and the watch for dead replicas.
func (e *env) background() *schedule.Scheduler {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	web := e.web()
	sched, err := e.app.Background(ctx, func(ch string) progress.Poster { return web.For(chat.Request{ChannelID: ch}) })
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		cancel()
		e.app.WaitBackground()
		e.app.Engine.Wait()
		sched.Stop()
	})
	return sched
}

// leaderOf waits until exactly one of the replicas leads and returns it.
func leaderOf(t *testing.T, within time.Duration, rs ...*env) (*env, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		var lead []*env
		for _, r := range rs {
			if r.app.Leader.Leader() {
				lead = append(lead, r)
			}
		}
		if len(lead) > 1 {
			t.Fatal("two replicas lead at once")
		}
		if len(lead) == 1 {
			return lead[0], time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no leader within %s", within)
	return nil, 0
}

func (e *env) backups() []*ops.Backup {
	e.t.Helper()
	recs, err := e.app.Backups.Records.Backups(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	return recs
}

// newRestoreReplicas is the restore sandbox with two replicas sharing
// state, both running their background work: A (the restore env's own
// app) and B. Tests using it are not parallel (see sharedState).
func newRestoreReplicas(t *testing.T) (*restoreEnv, *env, *env) {
	t.Helper()
	ra := newRestoreEnv(t, sharedState)
	a := ra.env
	b := a.replica(func(o *app.Options) { o.SSMEndpoint = ra.ssm.URL })
	ra.tune(b.app)
	a.background()
	b.background()
	return ra, a, b
}

// The clock strikes on both replicas; the leader runs the backup, once.
// The leader then dies as the next run falls due: the other replica
// takes the lease within the TTL and runs it, late, once.
func TestReplicasRunAScheduledBackupOnceAndHandOver(t *testing.T) {
	// Not parallel: see sharedState.
	// 29 February: the real cron never strikes during the test; the
	// scheduler's own clock is set to just after midnight of one.
	due := time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return due.Add(5 * time.Second) }
	a := newEnv(t, func(c *config.Config) {
		sharedState(c)
		c.Backup.Schedule = "0 0 29 2 *"
		c.Slack.ReportChannel = incident
	})
	b := a.replica()
	a.app.ScheduleClock, b.app.ScheduleClock = clock, clock
	scheds := map[*env]*schedule.Scheduler{a: a.background(), b: b.background()}
	lead, _ := leaderOf(t, 3*leaseTTL, a, b)
	other := map[*env]*env{a: b, b: a}[lead]
	leadName := map[*env]string{a: "replica-a", b: "replica-b"}[lead]
	a.slash(alice, incident, "status")
	if txt := a.slack.Text(a.waitPost(incident, "status", func(s string) bool { return strings.Contains(s, "Bot replicas alive:") })); !strings.Contains(txt, "`"+leadName+"` (leader)") || !strings.Contains(txt, "(answering)") || !strings.Contains(txt, "`replica-b`") {
		t.Errorf("status does not show the replicas: %q", txt)
	}

	// The last run was a year ago: this slot is due.
	lastYear := func() {
		if err := a.app.Store.Put(t.Context(), "schedule", "backup", schedule.Run{Job: "backup", Started: due.AddDate(-1, 0, 0), Finished: due.AddDate(-1, 0, 0), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	lastYear()
	before := len(a.backups())
	var wg sync.WaitGroup
	for _, r := range []*env{a, b, a, b} {
		wg.Go(func() { scheds[r].Fire("backup") })
	}
	wg.Wait()
	recs := a.backups()
	if n := len(recs) - before; n != 1 {
		t.Fatalf("the clock struck on both replicas: %d backups, want 1", n)
	}
	if recs[0].Trigger != "scheduled" || recs[0].State != ops.StateCompleted {
		t.Errorf("scheduled backup: %+v", recs[0])
	}
	if n := other.proxy.Count("CreateSnapshots"); n != 0 {
		t.Errorf("the replica that does not lead snapshotted %d times", n)
	}

	// The leader dies just as the next run falls due, before running it.
	lastYear()
	crashed := time.Now()
	lead.app.Crash()
	if got, took := leaderOf(t, 3*leaseTTL, other); got != other || took > leaseTTL+500*time.Millisecond {
		t.Errorf("handover took %s (lease TTL %s)", took, leaseTTL)
	}
	t.Logf("leadership handed over %s after the crash", time.Since(crashed).Round(time.Millisecond))
	deadline := time.Now().Add(30 * time.Second)
	for len(other.backups())-before < 2 || other.backups()[0].State != ops.StateCompleted {
		if time.Now().After(deadline) {
			t.Fatalf("the new leader did not run the run that fell due: %d backups", len(other.backups())-before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.waitPost(incident, "late-run note", func(s string) bool { return strings.Contains(s, "runs now") && strings.Contains(s, "handing over") })
	// Once: striking again in the same slot does nothing anywhere.
	scheds[other].Fire("backup")
	scheds[lead].Fire("backup")
	if n := len(other.backups()) - before; n != 2 {
		t.Errorf("%d scheduled backups, want 2", n)
	}
}

// A restore requested through one replica is approved through the other
// and runs there once. Slack's retry of the approval to the first replica
// is dropped; while the restore runs, a second destructive request on
// either replica is refused naming the operation that holds the box.
func TestReplicasApproveOnTheOtherAndRefuseConcurrentWork(t *testing.T) {
	// Not parallel: see newRestoreReplicas.
	ra, a, b := newRestoreReplicas(t)

	req := a.request(alice, "restore latest --rebuild")

	// B's launch waits until the test has seen the box held.
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	launching := make(chan struct{})
	var launchOnce sync.Once
	b.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "RunInstances" {
			launchOnce.Do(func() { close(launching) })
			<-release
		}
		return false
	}})

	form, _ := a.slashForm(bob, incident, "approve "+req)
	if r := b.post("/slack/commands", form.Encode(), time.Now(), signingSecret); r.StatusCode != http.StatusOK {
		t.Fatalf("approve on B: HTTP %d", r.StatusCode)
	}
	// Slack retries the same delivery, and the load balancer sends it to A.
	if r := a.post("/slack/commands", form.Encode(), time.Now(), signingSecret); r.StatusCode != http.StatusOK {
		t.Fatalf("retry on A: HTTP %d", r.StatusCode)
	}
	select {
	case <-launching:
	case <-time.After(60 * time.Second):
		t.Fatal("the approved restore did not reach its launch on B")
	}
	all, err := destructiveOps(t.Context(), b.app)
	if err != nil || len(all) != 1 {
		t.Fatalf("journal: %d ops, %v", len(all), err)
	}
	op := all[0]

	for _, r := range []*env{a, b} {
		if txt := r.answer(r.slash(alice, incident, "failover")); !strings.Contains(txt, op.ID) || !strings.Contains(txt, "on bot replica `replica-b`") || !strings.Contains(txt, "Nothing new was started") {
			t.Errorf("a failover while the restore runs: %q", txt)
		}
		if txt := r.answer(r.slash(alice, incident, "backup now")); !strings.Contains(txt, op.ID) {
			t.Errorf("a backup while the restore runs: %q", txt)
		}
	}
	free()
	a.waitText("summary", "Restored `"+ra.backup.ID+"`")
	a.server.Wait()
	b.server.Wait()
	ra.checkRestored()
	if n, m := realCount(a.proxy, "RunInstances"), realCount(b.proxy, "RunInstances"); n+m != 1 || m != 1 {
		t.Errorf("RunInstances: %d on A, %d on B; want one, on B", n, m)
	}
	done, _ := a.app.Journal.Get(t.Context(), op.ID)
	if done.State != journal.Done || done.Approver != bob {
		t.Errorf("journal: %s approved by %s", done.State, done.Approver)
	}
	hist, _ := a.app.Store.History(t.Context(), 100)
	approves := 0
	for _, h := range hist {
		if strings.HasPrefix(h.Command, "approve ") {
			approves++
		}
	}
	if approves != 1 {
		t.Errorf("the approval delivered twice was handled %d times", approves)
	}
}

// The replica running a restore dies (kill -9: nothing more of it reaches
// the shared state) mid-way through the launch. The other replica sees
// its heartbeat stop, announces the operation, and `resume` there
// finishes it without a second instance.
func TestReplicaKilledMidRestoreIsResumedOnTheOther(t *testing.T) {
	// Not parallel: see newRestoreReplicas.
	ra, a, b := newRestoreReplicas(t)
	req := a.request(alice, "restore latest --rebuild")

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var once sync.Once
	a.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		if c.Action == "AssignPrivateIpAddresses" {
			once.Do(func() { a.app.Crash(); stop() }) // the instance exists; the IPs are being moved
		}
		return false
	}})
	web := a.web()
	a.app.Bot.Handle(ctx, chat.Request{ID: "t1", UserID: bob, ChannelID: incident, Text: "approve " + req, Source: "test"},
		web.For(chat.Request{ChannelID: incident, UserID: bob}))

	all, err := destructiveOps(t.Context(), b.app)
	if err != nil || len(all) != 1 {
		t.Fatalf("journal: %d ops, %v", len(all), err)
	}
	op := all[0]
	if op.State != journal.Running || op.Process != a.app.Store.Process() {
		t.Fatalf("what the killed replica left: %s under %s", op.State, op.Process)
	}
	txt := b.waitText("announcement", op.ID, "was interrupted during step 6 (Launch the new Services box)", "resume "+op.ID)
	_ = txt
	n := 0
	for _, c := range b.slack.Calls() {
		if c.Method == "chat.postMessage" && strings.Contains(b.slack.Text(c), "was interrupted during step 6") {
			n++
			t.Logf("announcement at %s: %.80s", c.At.Format("15:04:05.000"), b.slack.Text(c))
		}
	}
	if n != 1 {
		t.Errorf("announced %d times", n)
	}
	ra.resumeFinishes(b, op.ID)
	if n := len(a.restored()); n != 1 {
		t.Errorf("%d restored instances", n)
	}
	done, _ := b.app.Journal.Get(t.Context(), op.ID)
	if done.State != journal.Done || done.Process != b.app.Store.Process() || done.Steps[5].Attempts != 2 {
		t.Errorf("journal after resume: %s under %s, launch attempts %d", done.State, done.Process, done.Steps[5].Attempts)
	}
}

func messagesWith(e *env, part string) []string {
	var out []string
	for _, m := range e.slack.Messages(incident) {
		if txt := m.AllText(); strings.Contains(txt, part) {
			out = append(out, txt)
		}
	}
	return out
}
