package app_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// boxEnv is a sandbox whose Services box answers SSM (the stand-in runs
// the bot's commands on a directory playing the box, app running) and an
// app health endpoint the bot probes with the box's IP. The stand-in
// follows what EC2 does to the box through the proxy, as a real box
// would: a stop takes its agent and app down; a start or a reboot brings
// the agent back later with a new boot time (in its /proc/stat), the app
// still down until it is started.
type boxEnv struct {
	*env
	ssm    *ssmbox.Server
	box    *ssmbox.Box
	health *httptest.Server

	mu      sync.Mutex
	probes  []string
	reboots int
	// downAfter is how long after a reboot the box still answers with its
	// old boot (the OS shutting down); upAfter how long after that it
	// answers again, booted.
	downAfter, upAfter time.Duration
	// closed: the test ended; what the box does later (timers) is dropped,
	// and the cleanup waits for what already runs (its directory goes next).
	closed  bool
	running sync.WaitGroup
}

// later does f after d, as the box would, unless the test has ended.
func (b *boxEnv) later(d time.Duration, f func()) {
	time.AfterFunc(d, func() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return
		}
		b.running.Add(1)
		b.mu.Unlock()
		defer b.running.Done()
		f()
	})
}

func newBoxEnv(t *testing.T, moto *motoserver.Server, edit func(*config.Config)) *boxEnv {
	t.Helper()
	b := &boxEnv{ssm: ssmbox.New(t), upAfter: 100 * time.Millisecond}
	b.health = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.probes = append(b.probes, r.URL.Query().Get("ip"))
		b.mu.Unlock()
	}))
	t.Cleanup(b.health.Close)
	// Registered after ssmbox.New's: runs before the box's directory is
	// removed.
	t.Cleanup(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.running.Wait()
	})
	b.env = newEnvOn(t, moto, func(c *config.Config) {
		c.Failover.HealthURL = b.health.URL + "/healthz?ip={ip}"
		if edit != nil {
			edit(c)
		}
	}, func(o *app.Options) { o.SSMEndpoint = b.ssm.URL })
	b.app.Snapshot.Poll = 20 * time.Millisecond // the pace reboot and resize poll at
	b.app.Engine.MinInterval = 20 * time.Millisecond
	b.box = b.ssm.AddBox(b.inst.ServicesBox.ID)
	b.box.SetAppState(ssmbox.AppStarted)
	b.setBoot(time.Now().Add(-48 * time.Hour))
	b.faults(faultproxy.Faults{})
	return b
}

// faults sets the proxy's faults; the stand-in box keeps following EC2.
func (b *boxEnv) faults(f faultproxy.Faults) {
	match := f.Match
	f.Match = func(c faultproxy.Call) bool {
		b.follow(c)
		return match != nil && match(c)
	}
	b.proxy.SetFaults(f)
}

// follow does to the stand-in box what a call through the proxy does to
// a real one.
func (b *boxEnv) follow(c faultproxy.Call) {
	if !slices.Contains(c.Params["InstanceId.1"], b.inst.ServicesBox.ID) || c.Params.Get("DryRun") == "true" {
		return // a dry run changes nothing
	}
	b.mu.Lock()
	down, up := b.downAfter, b.upAfter
	b.mu.Unlock()
	switch c.Action {
	case "StopInstances":
		b.box.SetOnline(false)
		b.box.SetAppState(ssmbox.AppStopped)
	case "StartInstances":
		b.later(up, func() { b.setBoot(time.Now()); b.box.SetOnline(true) })
	case "RebootInstances":
		b.mu.Lock()
		b.reboots++
		b.mu.Unlock()
		b.later(down, func() {
			b.box.SetOnline(false)
			b.box.SetAppState(ssmbox.AppStopped)
			b.later(up, func() { b.setBoot(time.Now()); b.box.SetOnline(true) })
		})
	}
}

// setBoot writes the box's boot time where the kernel shows it.
func (b *boxEnv) setBoot(at time.Time) {
	p := b.box.Path("/proc/stat")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		panic(err)
	}
	stat := fmt.Sprintf("cpu  1 2 3 4\nbtime %d\nprocesses 42\n", at.Unix())
	if err := os.WriteFile(p+".tmp", []byte(stat), 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		panic(err)
	}
}

func (b *boxEnv) lastProbe() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.probes) == 0 {
		return ""
	}
	return b.probes[len(b.probes)-1]
}

// commandsWith counts the SSM commands sent to the box whose script has s.
func (b *boxEnv) commandsWith(s string) int {
	n := 0
	for _, c := range b.ssm.Commands() {
		if slices.Equal(c.InstanceIDs, []string{b.inst.ServicesBox.ID}) && strings.Contains(strings.Join(c.Lines, "\n"), s) {
			n++
		}
	}
	return n
}

// An approved reboot sends RebootInstances, waits until the box has
// really rebooted (its agent first answers with the old boot time, then
// drops off, then comes back booted after the reboot), starts the app,
// waits for the status checks and the health URL on the box's IP, and
// says how long it took; the next reboot's plan expects that downtime.
func TestRebootApprovedWaitsUntilTheBoxIsBackAndMeasuresTheDowntime(t *testing.T) {
	b := newBoxEnv(t, motoserver.ForTest(t), nil)
	id, ip := b.inst.ServicesBox.ID, b.inst.ServicesBox.PrivateIP
	b.downAfter, b.upAfter = 300*time.Millisecond, 300*time.Millisecond

	req := b.request(alice, "reboot")
	plan := b.waitText("plan", req, "Approval needed")
	for _, want := range []string{id, ip, "RebootInstances", "boot time after the reboot", "replicated app", "expected downtime: about 5m", "no reboot by the bot has been measured yet", b.health.URL} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	b.proxy.Reset()
	b.click(bob, "approve "+req, "rb.1")
	sum := b.waitText("summary", "rebooted and is healthy")
	b.server.Wait()
	for _, want := range []string{id, "Downtime measured", "approved by <@" + bob + ">"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q: %s", want, sum)
		}
	}
	if b.reboots != 1 {
		t.Errorf("%d RebootInstances of the box, want 1", b.reboots)
	}
	if !strings.Contains(b.waitText("thread", "has not gone down yet"), "not gone down yet") {
		t.Errorf("the wait did not see the box still up before it rebooted")
	}
	calls := b.proxy.Calls()
	reboot := callIndex(calls, "RebootInstances", id)
	status := -1
	for i := reboot + 1; reboot >= 0 && i < len(calls); i++ {
		if calls[i].Action == "DescribeInstanceStatus" {
			status = i
		}
	}
	if reboot < 0 || status < 0 {
		t.Errorf("RebootInstances at %d, status checks read after it at %d", reboot, status)
	}
	if n := b.commandsWith("btime"); n < 1 {
		t.Errorf("the boot was never checked through SSM")
	}
	if b.box.AppState() != ssmbox.AppStarted || b.commandsWith("replicated app") == 0 {
		t.Errorf("the app was not started after the reboot (state %s)", b.box.AppState())
	}
	if got := b.lastProbe(); got != ip {
		t.Errorf("last health probe for %q, want the box's IP %s", got, ip)
	}
	if st := b.instance(id).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("box is %s after the reboot", st)
	}
	if l, _ := b.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the reboot: %+v", l)
	}

	// The next plan expects what this one took.
	rid := b.slash(alice, incident, "reboot --dry-run")
	dry := b.answer(rid)
	if !strings.Contains(dry, "as the last reboot took (`op-") || strings.Contains(dry, "a default") {
		t.Errorf("the second plan does not state the measured downtime:\n%s", dry)
	}
}

// A resize stops the box (the fence: confirmed stopped before anything
// else), changes its type, starts it, and checks it came back healthy on
// the same private IP with the same volumes. On the patched moto, as on
// AWS, a type change of a running instance is refused: the order is
// enforced, not only observed.
func TestResizeApprovedStopsChangesTheTypeAndStartsOnTheSameIPAndVolumes(t *testing.T) {
	b := newBoxEnv(t, patchedMoto(t), nil)
	id, ip := b.inst.ServicesBox.ID, b.inst.ServicesBox.PrivateIP
	before := b.instance(id)

	req := b.request(alice, "resize m5.4xlarge")
	plan := b.waitText("plan", req, "Approval needed")
	for _, want := range []string{
		id, "m5.2xlarge (8 vCPUs, 32 GiB)", "m5.4xlarge (16 vCPUs, 64 GiB)", "offered in " + b.inst.ServicesBox.AZ, "architecture x86_64",
		"ENA", "NVMe", "vCPU quota not checked", "set it back to m5.2xlarge", "expected downtime: about 10m", ip, "`vol-",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	b.proxy.Reset()
	b.click(bob, "approve "+req, "rs.1")
	sum := b.waitText("summary", "is now m5.4xlarge")
	b.server.Wait()
	if !strings.Contains(sum, "same private IP "+ip) || strings.Contains(sum, "Not resized") {
		t.Errorf("summary: %s", sum)
	}

	calls := b.proxy.Calls()
	stop, modify, start := callIndex(calls, "StopInstances", id), callIndex(calls, "ModifyInstanceAttribute", "m5.4xlarge"), callIndex(calls, "StartInstances", id)
	if stop < 0 || modify < stop || start < modify {
		t.Errorf("call order: stop %d, modify %d, start %d", stop, modify, start)
	}
	after := b.instance(id)
	if after.InstanceType != "m5.4xlarge" || after.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("after the resize the box is %s, %s", after.InstanceType, after.State.Name)
	}
	if aws.ToString(after.PrivateIpAddress) != ip {
		t.Errorf("private IP %s, want %s", aws.ToString(after.PrivateIpAddress), ip)
	}
	if got, want := volumeIDs(after), volumeIDs(before); !slices.Equal(got, want) || len(want) == 0 {
		t.Errorf("volumes %v, want %v", got, want)
	}
	if b.box.AppState() != ssmbox.AppStarted || b.commandsWith("replicated app") == 0 {
		t.Errorf("the app was not started after the resize")
	}
	if got := b.lastProbe(); got != ip {
		t.Errorf("last health probe for %q, want %s", got, ip)
	}
	if l, _ := b.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the resize: %+v", l)
	}
}

// When AWS cannot start the new type (no capacity in the zone), the box
// goes back to its old type and is started, and the summary says the box
// was not resized and why.
func TestResizeWithoutCapacityGoesBackToTheOldTypeAndSaysSo(t *testing.T) {
	moto := patchedMoto(t)
	b := newBoxEnv(t, moto, nil)
	id, ip := b.inst.ServicesBox.ID, b.inst.ServicesBox.PrivateIP
	before := b.instance(id)
	req := b.request(alice, "resize m5.4xlarge")
	if err := moto.SetUnavailableTypes(context.Background(), "m5.4xlarge"); err != nil {
		t.Fatal(err)
	}
	b.proxy.Reset()
	b.click(bob, "approve "+req, "cap.1")
	sum := b.waitText("summary", "Not resized")
	b.server.Wait()
	for _, want := range []string{"InsufficientInstanceCapacity", "set back to m5.2xlarge", "runs as before", ip} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q: %s", want, sum)
		}
	}
	after := b.instance(id)
	if after.InstanceType != "m5.2xlarge" || after.State.Name != ec2types.InstanceStateNameRunning || aws.ToString(after.PrivateIpAddress) != ip {
		t.Errorf("after the rollback the box is %s, %s, %s", after.InstanceType, after.State.Name, aws.ToString(after.PrivateIpAddress))
	}
	if !slices.Equal(volumeIDs(after), volumeIDs(before)) {
		t.Errorf("volumes changed: %v → %v", volumeIDs(before), volumeIDs(after))
	}
	calls := b.proxy.Calls()
	starts, modifies := 0, 0
	for _, c := range calls {
		if c.Params.Get("DryRun") == "true" {
			continue
		}
		switch c.Action {
		case "StartInstances":
			starts++
		case "ModifyInstanceAttribute":
			modifies++
		}
	}
	if back := callIndex(calls, "ModifyInstanceAttribute", "m5.2xlarge"); starts != 2 || modifies != 2 || back < callIndex(calls, "StartInstances", id) {
		t.Errorf("%d starts, %d type changes (back to m5.2xlarge at %d): want the new type tried, then the old one set and started", starts, modifies, back)
	}
	if l, _ := b.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the rollback: %+v", l)
	}
}

// A resize that stops part-way (AWS fails every start, after the SDK's
// and the step's retries) keeps the Services box locked, says CircleCI is
// down and how to go on; a resume continues from the start without
// stopping or changing the box again, and the box runs as the new type.
func TestResizeStoppedPartWayHoldsTheBoxAndResumes(t *testing.T) {
	b := newBoxEnv(t, patchedMoto(t), nil)
	id := b.inst.ServicesBox.ID
	req := b.request(alice, "resize m5.4xlarge")
	b.faults(faultproxy.Faults{ServerErrorRate: 1, Match: func(c faultproxy.Call) bool {
		return c.Action == "StartInstances" && c.Params.Get("DryRun") != "true"
	}})
	b.click(bob, "approve "+req, "rs.stop")
	stopped := b.waitText("stop", "Later steps did not run")
	b.server.Wait()
	for _, want := range []string{"CircleCI is down", "resume op-", "cancel op-", "Set the instance type to m5.4xlarge"} {
		if !strings.Contains(stopped, want) {
			t.Errorf("stopped message lacks %q: %s", want, stopped)
		}
	}
	if l, _ := b.app.Store.Locks(t.Context()); len(l) != 1 {
		t.Errorf("locks while the resize is stopped: %+v; want the box held", l)
	}
	if txt := b.answer(b.slash(alice, incident, "reboot")); !strings.Contains(txt, "another operation on the Services box") {
		t.Errorf("a reboot while the resize holds the box: %s", txt)
	}
	op := opIDRE.FindString(stopped)
	b.faults(faultproxy.Faults{})
	b.proxy.Reset()
	b.slash(alice, incident, "resume "+op)
	b.waitText("summary", "is now m5.4xlarge")
	b.server.Wait()
	for _, c := range b.proxy.Calls() {
		// The resume's pre-flight tries every call as a dry run, the done
		// steps' too (their rows do not count): only a real one is a repeat.
		if (c.Action == "StopInstances" || c.Action == "ModifyInstanceAttribute") && !isDryRun(c) {
			t.Errorf("the resume called %s again", c.Action)
		}
	}
	if in := b.instance(id); in.InstanceType != "m5.4xlarge" || in.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("after the resume the box is %s, %s", in.InstanceType, in.State.Name)
	}
	if l, _ := b.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left after the resume: %+v", l)
	}
}

// What cannot work is refused before anyone is asked to approve it, with
// a reason, and changes nothing: a type of another architecture, a type
// AWS does not have, the type the box is already, a Xen type for a Nitro
// box; and no box at all. --dry-run shows the plan and asks nobody.
func TestResizeAndRebootRefusedBeforeAnythingChanges(t *testing.T) {
	b := newBoxEnv(t, motoserver.ForTest(t), nil)
	id := b.inst.ServicesBox.ID
	for cmd, wants := range map[string][]string{
		"resize m6g.4xlarge": {"m6g.4xlarge runs arm64", "is x86_64", "cannot change the architecture"},
		"resize zz9.bogus":   {`AWS has no instance type "zz9.bogus"`},
		"resize m5.2xlarge":  {"is already m5.2xlarge"},
		"resize t2.2xlarge":  {"xvd devices", "Nitro"},
	} {
		txt := b.answer(b.slash(alice, incident, cmd))
		for _, want := range append(wants, "Nothing was requested") {
			if !strings.Contains(txt, want) {
				t.Errorf("%s: refusal lacks %q: %s", cmd, want, txt)
			}
		}
	}
	dry := b.answer(b.slash(alice, incident, "resize m5.4xlarge --dry-run"))
	if !strings.Contains(dry, "Dry run of") || !strings.Contains(dry, "m5.4xlarge") {
		t.Errorf("dry run: %s", dry)
	}
	b.server.Wait()
	if all, _ := b.app.Approvals.Store.All(t.Context()); len(all) != 0 {
		t.Fatalf("refusals and a dry run made %d requests", len(all))
	}
	for _, c := range b.proxy.Calls() {
		switch c.Action {
		case "StopInstances", "StartInstances", "ModifyInstanceAttribute", "RebootInstances":
			if c.Params.Get("DryRun") != "true" {
				t.Errorf("a refused or dry-run request called %s", c.Action)
			}
		}
	}
	if in := b.instance(id); in.InstanceType != "m5.2xlarge" || in.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("the box changed: %s, %s", in.InstanceType, in.State.Name)
	}

	// No box: both say so.
	if _, err := ec2.NewFromConfig(b.aws).CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{id},
		Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("renamed")}}}); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"reboot", "resize m5.4xlarge"} {
		if txt := b.answer(b.slash(alice, incident, cmd)); !strings.Contains(txt, "no instance is tagged Name=circleci_services") {
			t.Errorf("%s without a box: %s", cmd, txt)
		}
	}
}

var opIDRE = regexp.MustCompile(`op-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}`)

func volumeIDs(in ec2types.Instance) []string {
	var ids []string
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil {
			ids = append(ids, aws.ToString(m.Ebs.VolumeId))
		}
	}
	slices.Sort(ids)
	return ids
}
