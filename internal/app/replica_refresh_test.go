package app_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/engine"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/ops"
	"github.com/circlebot/circlebot/internal/progress"
	"github.com/circlebot/circlebot/internal/store"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// replicaHolders lists the instances carrying the replica's Name, read
// straight from moto. It reports instead of failing: it runs inside the
// fault proxy's Match, off the test's goroutine.
func (e *env) replicaHolders() ([]string, error) {
	insts, err := ops.FindByName(context.Background(), ec2.NewFromConfig(e.aws), replicaTag)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, in := range insts {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	slices.Sort(ids)
	return ids, nil
}

func nameOf(in ec2types.Instance) string {
	for _, tg := range in.Tags {
		if aws.ToString(tg.Key) == "Name" {
			return aws.ToString(tg.Value)
		}
	}
	return ""
}

// refreshOp is the journaled replica refresh (there is one per test).
func (e *env) refreshOp() *journal.Op {
	e.t.Helper()
	all, err := e.app.Journal.All(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, op := range all {
		if op.Kind == engine.KindReplicaRefresh {
			return op
		}
	}
	e.t.Fatal("no replica refresh in the journal")
	return nil
}

// Before every AWS call of a refresh — and so at every step boundary and
// at every point a crash could leave — at most one instance carries the
// replica's Name: the old replica until the last step retires it, none
// for the one call that names the new one, then the new one. The new
// replica is built as Name=<tag>-candidate, which no failover picks.
func TestReplicaRefreshNeverNamesTwoReplicasAtAnyStep(t *testing.T) {
	e := newReplicaEnv(t, nil)
	old := e.inst.Replica.ID
	req := e.request(alice, "replica refresh")
	plan := e.waitText("plan", req, "Approval needed")
	if !strings.Contains(plan, "Name="+replicaTag+"-candidate until the last step") {
		t.Errorf("plan does not say the new replica is built as a candidate:\n%s", plan)
	}

	var mu sync.Mutex
	var seen, bad []string // seen: who carried the Name, each change once
	e.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		ids, err := e.replicaHolders()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			bad = append(bad, c.Action+": "+err.Error())
			return false
		}
		if len(ids) > 1 {
			bad = append(bad, fmt.Sprintf("before %s: Name=%s is on %v", c.Action, replicaTag, ids))
		}
		if h := strings.Join(ids, ","); len(seen) == 0 || seen[len(seen)-1] != h {
			seen = append(seen, h)
		}
		return false
	}})
	e.click(bob, "approve "+req, "one.1")
	sum := e.waitText("summary", "The replica is `i-")
	e.server.Wait()
	e.proxy.SetFaults(faultproxy.Faults{})

	reps := e.byName(replicaTag)
	if len(reps) != 1 || aws.ToString(reps[0].InstanceId) == old {
		t.Fatalf("replicas after the refresh: %v", reps)
	}
	nu := aws.ToString(reps[0].InstanceId)
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
	if want := []string{old, "", nu}; !slices.Equal(seen, want) {
		t.Errorf("Name=%s was on %q in turn, want %q (the old replica, none for one call, the new one)", replicaTag, seen, want)
	}
	if c := e.byName(replicaTag + "-candidate"); len(c) != 0 {
		t.Errorf("a candidate is left: %v", c)
	}
	if o := e.instance(old); nameOf(o) != replicaTag+"-retired" || o.State.Name != ec2types.InstanceStateNameStopped {
		t.Errorf("old replica: Name=%s, %s", nameOf(o), o.State.Name)
	}
	if !strings.Contains(sum, "Launch the new replica as Name="+replicaTag+"-candidate") || !strings.Contains(sum, "is now Name="+replicaTag+", the replica") {
		t.Errorf("summary: %s", sum)
	}
	if l, _ := e.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
}

// The bot is cut off between the two renames of the last step: the old
// replica is retired (stopped, Name=<tag>-retired), the new one is still
// the candidate. What a kill -9 then leaves (the step running under a dead
// process, the Services box it took back still held) is recovered: a
// failover meanwhile is refused and told which refresh holds the box and
// how to go on; `resume` names the new replica and repeats nothing (no
// image, launch, stop or retiring rename again).
func TestReplicaRefreshCutBetweenTheRenamesResumesWithoutRepeats(t *testing.T) {
	e := newReplicaEnv(t, nil)
	old := e.inst.Replica.ID
	req := e.request(alice, "replica refresh")

	ctx, stop := context.WithCancel(context.Background())
	var once sync.Once
	e.proxy.SetFaults(faultproxy.Faults{ServerErrorRate: 1, Match: func(c faultproxy.Call) bool {
		if c.Action == "CreateTags" && c.Params.Get("Tag.1.Value") == replicaTag {
			once.Do(stop) // the old one is retired; the new one is not named
			return true
		}
		return false
	}})
	web := e.web()
	e.app.Bot.Handle(ctx, chat.Request{ID: "t1", UserID: bob, ChannelID: incident, Text: "approve " + req, Source: "test"},
		web.For(chat.Request{ChannelID: incident, UserID: bob}))
	e.proxy.SetFaults(faultproxy.Faults{})

	op := e.refreshOp()
	last := len(op.Steps) - 1
	if op.State != journal.Stopped || op.Next() != last {
		t.Fatalf("after the cut: %s at step %d (%s)", op.State, op.Next()+1, op.Why)
	}
	if h, _ := e.replicaHolders(); len(h) != 0 {
		t.Errorf("between the renames Name=%s is on %v", replicaTag, h)
	}
	cands := e.byName(replicaTag + "-candidate")
	if len(cands) != 1 {
		t.Fatalf("%d candidates", len(cands))
	}
	nu := aws.ToString(cands[0].InstanceId)
	if o := e.instance(old); nameOf(o) != replicaTag+"-retired" || o.State.Name != ec2types.InstanceStateNameStopped {
		t.Fatalf("old replica: Name=%s, %s", nameOf(o), o.State.Name)
	}

	// Cut (not killed), the step gave the box back: a failover finds no
	// replica, and is told the new one is not verified, whose it is and
	// how to finish it.
	if txt := e.answer(e.slash(alice, incident, "failover --dry-run")); !strings.Contains(txt, "there is no replica tagged Name="+replicaTag) ||
		!strings.Contains(txt, "`"+nu+"`") || !strings.Contains(txt, "the replica refresh `"+op.ID+"`") || !strings.Contains(txt, "`resume`") {
		t.Errorf("a failover between the renames: %s", txt)
	}
	// Named with --to, the candidate is refused too: the policy lets the
	// bot name only the replica the box, and it is not verified.
	if txt := e.answer(e.slash(alice, incident, "failover --to "+nu+" --dry-run")); !strings.Contains(txt, "`"+nu+"` is the new replica the replica refresh `"+op.ID+"` is building") ||
		!strings.Contains(txt, "`resume`") {
		t.Errorf("a failover --to the candidate: %s", txt)
	}

	// A kill -9 inside the step: running under a dead process, the box
	// it took back held under it.
	if _, err := e.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.State, o.Process, o.Why = journal.Running, "dead-process", ""
		o.Steps[last].State = journal.StepRunning
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.app.Store.TryLock(t.Context(), store.Lock{Key: engine.BoxLock(e.app.Config.ServicesBox.NameTag), OpID: op.ID, What: "replica refresh", Process: "dead-process"}); err != nil {
		t.Fatal(err)
	}
	e.app.Resume(context.Background(), func(string) progress.Poster { return web.For(chat.Request{ChannelID: incident}) })
	e.waitText("announcement", op.ID, "interrupted during step 6")

	if txt := e.answer(e.slash(alice, incident, "failover --dry-run")); !strings.Contains(txt, op.ID) || !strings.Contains(txt, "replica refresh") ||
		!strings.Contains(txt, "resume "+op.ID) || !strings.Contains(txt, "cancel "+op.ID) {
		t.Errorf("a failover while the refresh is cut in its last step: %s", txt)
	}

	e.proxy.Reset()
	e.slash(alice, incident, "resume "+op.ID)
	e.waitText("summary", "The replica is `"+nu+"`")
	e.server.Wait()
	calls := e.proxy.Calls()
	for _, a := range []string{"CreateImage", "RunInstances", "StopInstances", "TerminateInstances"} {
		if n := countCalls(calls, a); n != 0 {
			t.Errorf("the resume called %s %d times", a, n)
		}
	}
	renames := map[string]int{}
	for _, c := range calls {
		if c.Action == "CreateTags" {
			renames[c.Params.Get("Tag.1.Value")]++
		}
	}
	if renames[replicaTag+"-retired"] != 0 || renames[replicaTag] != 1 {
		t.Errorf("renames by the resume: %v; want the new replica named once, the old one not again", renames)
	}
	if h, _ := e.replicaHolders(); !slices.Equal(h, []string{nu}) {
		t.Errorf("after the resume Name=%s is on %v, want %s", replicaTag, h, nu)
	}
	done, _ := e.app.Journal.Get(t.Context(), op.ID)
	for i, st := range done.Steps {
		if want := 1 + btoi(i == last); st.Attempts != want {
			t.Errorf("step %d (%s) ran %d times, want %d", i+1, st.Name, st.Attempts, want)
		}
	}
	if l, _ := e.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
}

// waitPosted waits until request id's message is posted in full (what
// e.request gets from e.server.Wait, which waits for every operation).
func (e *env) waitPosted(id string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		all, err := e.app.Approvals.Store.All(e.t.Context())
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range all {
			if r.ID == id && r.State != approvals.Posting {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("request %s is still being posted", id)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// newRefreshFailoverEnv is a replica sandbox in which a failover runs to
// its end: boxes answer SSM, the app's health endpoint answers, and with
// no discovery and no builder group nothing else moves.
func newRefreshFailoverEnv(t *testing.T) *env {
	t.Helper()
	s := ssmbox.New(t)
	health := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(health.Close)
	e := newEnvOn(t, patchedMoto(t), func(c *config.Config) {
		c.Failover.Discovery = "none" // the seeded replica is in another subnet
		c.Builders.ASGName = ""
		c.Failover.HealthURL = health.URL + "/healthz?ip={ip}"
	}, func(o *app.Options) { o.SSMEndpoint = s.URL })
	e.app.Snapshot.Poll = 20 * time.Millisecond
	e.app.Failover.Poll = 20 * time.Millisecond
	e.app.Engine.MinInterval = 20 * time.Millisecond
	s.AddBox(e.inst.ServicesBox.ID)
	s.AddBox(e.inst.Replica.ID).SetAppState(ssmbox.AppStopped)
	return e
}

// An incident while a refresh builds the new replica: the failover is not
// refused (the refresh gave the Services box back once its image was
// made); its plan says a new replica is being built and is not the
// replica, and it promotes the old, in-sync one. While the failover runs
// (held at its fence) the refresh reaches its last step, cannot take the
// box back, and stops having done nothing, naming the failover. Resumed
// after the failover, it stops again without retiring the promoted
// replica; the new one stays a candidate, and giving the refresh up says
// what is where.
func TestFailoverDuringAReplicaRefreshGoesToTheOldReplica(t *testing.T) {
	e := newRefreshFailoverEnv(t)
	old := e.inst.Replica.ID
	direct := ec2.NewFromConfig(e.aws)

	// The refresh is held as it waits for the new replica to run.
	release, blocked := make(chan struct{}), make(chan string, 1)
	var first atomic.Bool
	var released sync.Once
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	// The failover is held at its fence, holding the Services box.
	releaseF, fencing := make(chan struct{}), make(chan struct{}, 1)
	var firstF atomic.Bool
	var releasedF sync.Once
	t.Cleanup(func() { releasedF.Do(func() { close(releaseF) }) })
	e.proxy.SetFaults(faultproxy.Faults{Match: func(c faultproxy.Call) bool {
		id := c.Params.Get("InstanceId.1")
		if c.Action == "StopInstances" && id == e.inst.ServicesBox.ID && c.Params.Get("DryRun") != "true" {
			if firstF.CompareAndSwap(false, true) {
				fencing <- struct{}{}
				<-releaseF
			}
			return false
		}
		if c.Action != "DescribeInstances" || id == "" || id == old || id == e.inst.ServicesBox.ID {
			return false
		}
		out, err := direct.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil || len(out.Reservations) == 0 || !slices.ContainsFunc(out.Reservations[0].Instances[0].Tags, func(tg ec2types.Tag) bool { return aws.ToString(tg.Key) == ops.TagReplicaOp }) {
			return false // not the refresh's new replica
		}
		if first.CompareAndSwap(false, true) { // the others pass
			blocked <- id
			<-release
		}
		return false
	}})
	reqR := e.request(alice, "replica refresh")
	e.click(bob, "approve "+reqR, "ref.1")
	var cand string
	select {
	case cand = <-blocked:
	case <-time.After(60 * time.Second):
		t.Fatal("the refresh never launched its new replica")
	}
	opR := e.refreshOp().ID

	// Status and doctor find the replica by its Name: the old one, and
	// the new one said to be built, not the replica.
	e.slash(alice, incident, "status")
	if st := e.waitText("status", "Being built, not the replica"); !strings.Contains(st, "`"+cand+"`") || !strings.Contains(st, "`"+opR+"`") || strings.Contains(st, "instances are tagged") {
		t.Errorf("status during the refresh:\n%s", st)
	}
	if d := e.answer(e.slash(alice, incident, "doctor")); !strings.Contains(d, "Replica being built") || !strings.Contains(d, "`"+cand+"`") || !strings.Contains(d, "`"+old+"`") {
		t.Errorf("doctor during the refresh:\n%s", d)
	}

	// Not e.request: it waits for the server's work, the held refresh too.
	e.slash(alice, incident, "failover")
	c := e.waitPost(incident, "failover plan", func(s string) bool {
		return strings.Contains(s, "Approval needed: failover")
	})
	reqF := reqIDRE.FindStringSubmatch(e.slack.Text(c))[1]
	plan := e.waitText("failover plan", reqF, "Approval needed")
	for _, want := range []string{"replica: `" + old + " (running", "`" + cand + "`", "is the new replica the replica refresh `" + opR + "` is building", "not the replica, not touched", "cancel " + opR} {
		if !strings.Contains(plan, want) {
			t.Errorf("failover plan lacks %q:\n%s", want, plan)
		}
	}
	e.proxy.Reset()
	e.waitPosted(reqF)
	e.click(bob, "approve "+reqF, "fo.1")
	select {
	case <-fencing:
	case <-time.After(60 * time.Second):
		t.Fatal("the failover never fenced the box")
	}
	released.Do(func() { close(release) })
	held := e.waitText("refresh at the held box", opR, "this step needs it and did nothing")
	if !strings.Contains(held, "(failover, requested by") || !strings.Contains(held, "resume "+opR) || !strings.Contains(held, "cancel "+opR) {
		t.Errorf("the refresh's stop at the box a failover holds: %s", held)
	}
	if h, _ := e.replicaHolders(); !slices.Equal(h, []string{old}) {
		t.Errorf("with the failover under way Name=%s is on %v, want the old replica alone", replicaTag, h)
	}
	if o := e.instance(old); o.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("the refresh touched the old replica: %s", o.State.Name)
	}
	releasedF.Do(func() { close(releaseF) })
	// The summary advises a backup, which the refresh holds up: it says
	// which to cancel.
	e.waitText("failover summary", "The Services box is now `"+old+"`", "cancel "+opR+"` (the replica refresh of the old box")

	e.slash(alice, incident, "resume "+opR)
	stopped := e.waitText("refresh stop", opR, "was it promoted?")
	e.server.Wait()
	if !strings.Contains(stopped, "stays Name="+replicaTag+"-candidate") {
		t.Errorf("the refresh's stop: %s", stopped)
	}
	o := e.instance(old)
	if nameOf(o) != e.app.Config.ServicesBox.NameTag || o.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("the promoted replica: Name=%s, %s", nameOf(o), o.State.Name)
	}
	for _, c := range e.proxy.Calls() {
		if (c.Action == "StopInstances" || c.Action == "TerminateInstances") && c.Params.Get("InstanceId.1") == old && c.Fault == "" {
			t.Errorf("%s on the promoted replica", c.Action)
		}
	}
	if c := e.instance(cand); nameOf(c) != replicaTag+"-candidate" {
		t.Errorf("the new replica is Name=%s", nameOf(c))
	}
	if h, _ := e.replicaHolders(); len(h) != 0 {
		t.Errorf("Name=%s is on %v after the failover", replicaTag, h)
	}

	e.slash(alice, incident, "cancel "+opR)
	gone := e.waitText("give-up", "gave up `"+opR+"`")
	for _, want := range []string{"`" + cand + "`, still Name=" + replicaTag + "-candidate: not the replica", "the old replica `" + old + "`, not retired"} {
		if !strings.Contains(gone, want) {
			t.Errorf("the give-up lacks %q: %s", want, gone)
		}
	}
	e.server.Wait()
	if l, _ := e.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
}
