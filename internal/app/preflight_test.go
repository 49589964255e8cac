package app_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

// changingCalls are the calls that change something in AWS.
var changingCalls = []string{
	"RunInstances", "StopInstances", "StartInstances", "TerminateInstances", "RebootInstances", "ModifyInstanceAttribute",
	"CreateTags", "RegisterImage", "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AttachNetworkInterface",
	"DetachNetworkInterface", "CreateSnapshots", "CreateSnapshot", "DeleteSnapshot", "DeregisterImage", "SetDesiredCapacity",
	"TerminateInstanceInAutoScalingGroup", "RegisterTargets", "DeregisterTargets", "SendCommand",
}

// changes lists the calls that reached the proxy and would have changed
// something: mutating calls that were not dry runs.
func changes(calls []faultproxy.Call) []string {
	var out []string
	for _, c := range calls {
		if slices.Contains(changingCalls, c.Action) && c.Params.Get("DryRun") != "true" {
			out = append(out, c.Action)
		}
	}
	return out
}

// realCount is how many calls of action, not dry runs, reached the proxy.
func realCount(p *faultproxy.Proxy, action string) int {
	n := 0
	for _, c := range p.Calls() {
		if c.Action == action && c.Params.Get("DryRun") != "true" {
			n++
		}
	}
	return n
}

// isDryRun: a pre-flight's call (DryRun=true), which changes nothing; a
// test that faults or counts the real calls skips it.
func isDryRun(c faultproxy.Call) bool { return c.Params.Get("DryRun") == "true" }

// dryRuns lists the dry-run calls that reached the proxy.
func dryRuns(calls []faultproxy.Call) []string {
	var out []string
	for _, c := range calls {
		if c.Params.Get("DryRun") == "true" {
			out = append(out, c.Action)
		}
	}
	return out
}

// denyDryRun is the policy without action: AWS answers
// UnauthorizedOperation to its dry run (and would to the call itself).
func denyDryRun(action string) faultproxy.Faults {
	return faultproxy.Faults{Deny: func(c faultproxy.Call) bool {
		return c.Service == "ec2" && c.Action == action && c.Params.Get("DryRun") == "true"
	}}
}

var blockedRE = regexp.MustCompile(`/circleci deny (req-[0-9a-f]{8})`)

// blockedRequest sends a destructive command whose pre-flight AWS
// refuses and returns the request shown without an Approve button, and
// its message.
func (e *env) blockedRequest(user, text string) (string, string) {
	e.t.Helper()
	e.slash(user, incident, text)
	c := e.waitPost(incident, "blocked request for "+text, func(s string) bool {
		return strings.Contains(s, "Cannot be approved") && blockedRE.MatchString(s)
	})
	e.server.Wait()
	msg := e.slack.Text(c)
	return blockedRE.FindStringSubmatch(msg)[1], msg
}

// A restore whose pre-flight AWS refuses (the policy lacks
// ec2:TerminateInstances) is shown with its table and cannot be
// approved, by button or command; nothing but reads and dry runs reached
// AWS, and the old box still runs.
func TestRefusedPreflightStopsARestoreBeforeAnythingChanges(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	r.proxy.Reset()
	r.proxy.SetFaults(denyDryRun("TerminateInstances"))
	req, msg := r.blockedRequest(alice, "restore latest --rebuild")
	for _, want := range []string{"Pre-flight", "refused", "`ec2:TerminateInstances` " + r.inst.ServicesBox.ID, "UnauthorizedOperation", "`ec2:RegisterImage`", "`ec2:StopInstances`", "`ec2:ModifyInstanceAttribute`", "`ec2:CreateTags`", "tags", "instance type"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "approve "+req) {
		t.Errorf("a blocked request offers approve:\n%s", msg)
	}
	ans := r.answer(r.slash(bob, incident, "approve "+req))
	if !strings.Contains(ans, "cannot be approved") || !strings.Contains(ans, "ec2:TerminateInstances") {
		t.Fatalf("approve of a blocked request: %s", ans)
	}
	r.click(bob, "approve "+req, "pf.1")
	r.server.Wait()
	calls := r.proxy.Calls()
	if c := changes(calls); len(c) > 0 {
		t.Fatalf("a refused pre-flight let these calls through: %v", c)
	}
	if d := dryRuns(calls); !slices.Contains(d, "RegisterImage") || !slices.Contains(d, "StopInstances") {
		t.Errorf("dry runs made: %v", d)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a refused pre-flight", st)
	}
	if n := len(r.restored()); n != 0 {
		t.Errorf("%d instances launched", n)
	}
	if ops, _ := destructiveOps(t.Context(), r.app); len(ops) != 0 {
		t.Errorf("operations journaled: %d", len(ops))
	}
}

// A failover whose fence AWS would refuse cannot be approved: the table
// names the refused StopInstances, and the service address stays.
func TestRefusedPreflightStopsAFailoverBeforeAnythingChanges(t *testing.T) {
	t.Parallel()
	f := newFailoverEnv(t, nil)
	f.proxy.Reset()
	f.proxy.SetFaults(denyDryRun("StopInstances"))
	req, msg := f.blockedRequest(alice, "failover --to "+f.standby)
	for _, want := range []string{"Pre-flight", "`ec2:StopInstances` " + f.inst.ServicesBox.ID, "UnauthorizedOperation", "`ec2:AssignPrivateIpAddresses`", "`ec2:CreateTags` " + f.standby} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request message lacks %q:\n%s", want, msg)
		}
	}
	ans := f.answer(f.slash(bob, incident, "approve "+req))
	if !strings.Contains(ans, "cannot be approved") {
		t.Fatalf("approve of a blocked failover: %s", ans)
	}
	f.server.Wait()
	if c := changes(f.proxy.Calls()); len(c) > 0 {
		t.Fatalf("a refused pre-flight let these calls through: %v", c)
	}
	if st := f.instance(f.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the primary is %s after a refused pre-flight", st)
	}
	if h := f.holdersOf(f.inst.ServicesBox.SecondaryIP); len(h) != 1 || h[0] != f.inst.ServicesBox.ID {
		t.Errorf("the service address is on %v", h)
	}
}

// The pre-flight passed when the restore was requested; by the time it
// is approved the policy has lost ec2:RegisterImage. The pre-flight run
// again just before the first step stops it: nothing is journaled or
// changed, and the channel is told why.
func TestPreflightRefusedAtApprovalStopsBeforeTheFirstStep(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	plan := r.waitText("the request", req, "Pre-flight")
	if !strings.Contains(plan, ":white_check_mark: AWS would accept") {
		t.Fatalf("the pre-flight of a healthy sandbox is not all green:\n%s", plan)
	}
	r.proxy.Reset()
	r.proxy.SetFaults(denyDryRun("RegisterImage"))
	r.click(bob, "approve "+req, "pf.2")
	r.waitText("refusal", req, "approved but not run", "ec2:RegisterImage", "Nothing was changed")
	r.server.Wait()
	if c := changes(r.proxy.Calls()); len(c) > 0 {
		t.Fatalf("a pre-flight refused at approval let these calls through: %v", c)
	}
	if ops, _ := destructiveOps(t.Context(), r.app); len(ops) != 0 {
		t.Errorf("operations journaled: %d", len(ops))
	}
	if l, _ := r.app.Store.Locks(t.Context()); len(l) != 0 {
		t.Errorf("locks left: %+v", l)
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s", st)
	}
}

// The launch is tried with the restore's own image once it exists: a
// launch AWS would refuse stops the restore after the image step, before
// the old box is protected, stopped or terminated.
func TestRestoreStopsBeforeTheOldBoxWhenTheLaunchWouldBeRefused(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	r.proxy.Reset()
	r.proxy.SetFaults(denyDryRun("RunInstances"))
	r.click(bob, "approve "+req, "pf.3")
	r.waitText("the stop", "could not be launched", "old one was not touched")
	r.server.Wait()
	for _, c := range changes(r.proxy.Calls()) {
		if c != "RegisterImage" && c != "CreateTags" {
			t.Errorf("%s reached AWS before the launch was shown to work", c)
		}
	}
	if st := r.instance(r.inst.ServicesBox.ID).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s", st)
	}
	if n := len(r.restored()); n != 0 {
		t.Errorf("%d instances launched", n)
	}
}

// `doctor` answers a viewer with the table; the daily report carries its
// verdict line; when a permission goes missing, the report says NOT READY
// and the monitor channel is alerted once, not at every report.
func TestDoctorForViewersAndTheReportsVerdict(t *testing.T) {
	t.Parallel()
	const monitorCh = "C0MONITOR"
	f := newFailoverEnv(t, func(c *config.Config) {
		c.Failover.Discovery = "none" // the seeded replica is in the other zone
		c.Backup.Bucket = "circleci-backups-sandbox"
		c.Monitor.Channel = monitorCh
	})
	f.ssm.AddBox(f.inst.Replica.ID)
	doc := f.answer(f.slash(vera, incident, "doctor"))
	for _, want := range []string{"Recovery readiness: ready", "Services box", "SSM agent on the replica", "Backup (EBS)", "Backup (tarball): bucket", "`restore latest`", "`failover`", "`builders rotate`", "within the RPO"} {
		if !strings.Contains(doc, want) {
			t.Errorf("doctor lacks %q:\n%s", want, doc)
		}
	}
	f.server.Wait()
	if c := changes(f.proxy.Calls()); len(c) > 0 {
		t.Fatalf("the doctor changed something: %v", c)
	}
	f.slash(alice, incident, "report now")
	f.waitText("green report", "Daily backup report", "Recovery readiness: ready")
	f.server.Wait()
	f.proxy.SetFaults(denyDryRun("CreateSnapshots"))
	for i := range 2 {
		before := len(f.slack.Messages(incident))
		f.slash(alice, incident, "report now")
		f.server.Wait()
		f.slack.WaitFor(t, 30*time.Second, "report", func(slackfake.Call) bool { return len(f.slack.Messages(incident)) > before })
		last := f.slack.Messages(incident)[len(f.slack.Messages(incident))-1].AllText()
		if !strings.Contains(last, "NOT READY") || !strings.Contains(last, "Backup (EBS)") {
			t.Fatalf("report %d after the permission went: %s", i+1, last)
		}
	}
	alerts := f.slack.Messages(monitorCh)
	if len(alerts) != 1 || !strings.Contains(alerts[0].AllText(), "ec2:CreateSnapshots") {
		var all []string
		for _, m := range alerts {
			all = append(all, m.AllText())
		}
		t.Fatalf("%d alerts in the monitor channel, want 1 naming ec2:CreateSnapshots:\n%s", len(alerts), strings.Join(all, "\n---\n"))
	}
}

// A prune whose deletions the policy would refuse is shown with the
// refused rows and cannot be approved: no set is marked, no snapshot
// deleted (before, it was approved, marked the first set and stopped at
// its first deletion).
func TestRefusedPreflightStopsAPruneBeforeAnythingIsMarked(t *testing.T) {
	t.Parallel()
	e, _, made := pruneEnv(t)
	older := made[0]
	e.proxy.Reset()
	e.proxy.SetFaults(denyDryRun("DeleteSnapshot"))
	req, msg := e.blockedRequest(alice, "backup prune")
	for _, want := range []string{"Pre-flight", "refused", "`ec2:DeleteSnapshot`", older.ID, "UnauthorizedOperation", "`ec2:CreateTags`"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the request message lacks %q:\n%s", want, msg)
		}
	}
	if ans := e.answer(e.slash(bob, incident, "approve "+req)); !strings.Contains(ans, "cannot be approved") {
		t.Fatalf("approve of a blocked request: %s", ans)
	}
	e.server.Wait()
	if c := changes(e.proxy.Calls()); len(c) > 0 {
		t.Fatalf("a refused pre-flight let these calls through: %v", c)
	}
	if n := len(e.snapshotsOf(older.ID)); n != 3 {
		t.Errorf("%d snapshots of %s left, want 3", n, older.ID)
	}
}
