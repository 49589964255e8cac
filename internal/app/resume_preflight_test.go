package app_test

import (
	"strings"
	"testing"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
)

// roleDenies is a role session (ops.role_arn) that has lost the EC2
// actions given: AWS answers UnauthorizedOperation to them, dry run or
// not; the bot's own key keeps them (so a pre-flight run as the bot would
// not see the loss).
func roleDenies(actions ...string) faultproxy.Faults {
	return faultproxy.Faults{Deny: func(c faultproxy.Call) bool {
		if c.Service != "ec2" || c.AccessKey == baseKey {
			return false
		}
		for _, a := range actions {
			if c.Action == a {
				return true
			}
		}
		return false
	}}
}

// deniedDryRuns lists the dry runs the proxy refused as IAM would, signed
// by a role session.
func deniedDryRuns(calls []faultproxy.Call) map[string]int {
	out := map[string]int{}
	for _, c := range calls {
		if isDryRun(c) && c.Fault == faultproxy.FaultDenied && c.AccessKey != baseKey {
			out[c.Action]++
		}
	}
	return out
}

// stoppedAtTheStop requests a rebuild restore, approves it (click is the
// button's trigger) and lets AWS refuse its StopInstances: the restore is
// stopped at "Stop the old instance", the box untouched.
func (r *restoreEnv) stoppedAtTheStop(click string) *journal.Op {
	t := r.t
	t.Helper()
	req := r.request(alice, "restore latest --rebuild")
	r.proxy.SetFaults(faultproxy.Faults{Deny: func(c faultproxy.Call) bool { return c.Action == "StopInstances" && !isDryRun(c) }})
	r.click(bob, "approve "+req, click)
	r.waitText("the restore stopped at its stop step", "Later steps did not run")
	r.server.Wait()
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil || op.State != journal.Stopped || op.Steps[op.Next()].Name != "Stop the old instance" {
		t.Fatalf("after the refused stop: %+v, %v", op, err)
	}
	return op
}

// A restore stops at its stop step (the stop was refused). Before anyone
// resumes it, the operation's role loses ec2:TerminateInstances, which a
// step still to run needs, and ec2:ModifyInstanceAttribute, which only
// its done protect step used. `resume` runs the pre-flight again, in the
// role session, and refuses: the channel is told the call, the box it
// acts on, AWS's answer and what to do; no call changes anything, the box
// still runs, and the restore stays stopped at the same step, holding
// the box. Once TerminateInstances is back, the same resume finishes,
// though the done step's permission is still missing. (Before, resume
// stopped the box and then failed to terminate it: CircleCI down,
// half-way.)
func TestResumeIsRefusedWhenAStepLeftLostItsPermission(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, func(c *config.Config) { c.Ops.RoleARN = opsRole })
	box := r.inst.ServicesBox.ID
	op := r.stoppedAtTheStop("rpf.1")
	stoppedAt := op.Next()

	r.proxy.Reset()
	r.proxy.SetFaults(roleDenies("TerminateInstances", "ModifyInstanceAttribute"))
	r.slash(alice, incident, "resume "+op.ID)
	msg := r.waitText("the refused resume", "`"+op.ID+"`", "was not resumed")
	for _, want := range []string{"just before step 4 (Stop the old instance)", "ec2:TerminateInstances on " + box, "for step 5, Free the private IP", "UnauthorizedOperation",
		"Fix the permission", "resume " + op.ID + "` again", "cancel " + op.ID} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "ModifyInstanceAttribute") {
		t.Errorf("the done protect step's row was held against the resume:\n%s", msg)
	}
	r.server.Wait()
	calls := r.proxy.Calls()
	if c := changes(calls); len(c) > 0 {
		t.Fatalf("a refused resume let these calls through: %v", c)
	}
	if d := deniedDryRuns(calls); d["TerminateInstances"] == 0 || d["ModifyInstanceAttribute"] == 0 {
		t.Errorf("the role session's dry runs refused: %v; want TerminateInstances and ModifyInstanceAttribute", d)
	}
	if st := r.instance(box).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a refused resume", st)
	}
	if got, _ := r.app.Journal.Get(t.Context(), op.ID); got.State != journal.Stopped || got.Next() != stoppedAt {
		t.Errorf("after the refused resume: %s at step %d (%s)", got.State, got.Next()+1, got.Why)
	}
	if l, _ := r.app.Store.Locks(t.Context()); len(l) != 1 || l[0].OpID != op.ID {
		t.Errorf("locks %+v, want the box held by %s", l, op.ID)
	}

	// TerminateInstances is back; the protect step's permission is not,
	// and it ran already.
	r.proxy.Reset()
	r.proxy.SetFaults(roleDenies("ModifyInstanceAttribute"))
	r.slash(alice, incident, "resume "+op.ID)
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.checkRestored()
	if d := deniedDryRuns(r.proxy.Calls()); d["ModifyInstanceAttribute"] == 0 {
		t.Errorf("the resume made no dry run of the done step's call (%v): the test proves nothing about it", d)
	}
	if got, _ := r.app.Journal.Get(t.Context(), op.ID); got.State != journal.Done {
		t.Errorf("after the resume: %s", got.State)
	}
}

// A restore stops after its launch (the status checks could not be
// read). Its role has since lost every call of its done steps — the
// image, the stop, the termination, the launch (its new box holds the
// address now). The resume's pre-flight tries them all and none of them
// blocks: the restore finishes with one new box.
func TestResumeIsNotHeldByTheRowsOfDoneSteps(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, func(c *config.Config) { c.Ops.RoleARN = opsRole })
	req := r.request(alice, "restore latest --rebuild")
	r.proxy.SetFaults(faultproxy.Faults{Deny: func(c faultproxy.Call) bool { return c.Action == "DescribeInstanceStatus" }})
	r.click(bob, "approve "+req, "rpf.2")
	r.waitText("the restore stopped after its launch", "Later steps did not run")
	r.server.Wait()
	op, err := r.app.Journal.ByRequest(t.Context(), req)
	if err != nil || op.State != journal.Stopped || op.Steps[op.Next()].Name != "Wait for running and status checks" {
		t.Fatalf("after the refused status checks: %+v, %v", op, err)
	}

	r.proxy.Reset()
	r.proxy.SetFaults(roleDenies("RegisterImage", "ModifyInstanceAttribute", "StopInstances", "TerminateInstances", "RunInstances"))
	r.slash(alice, incident, "resume "+op.ID)
	r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.checkRestored()
	if d := deniedDryRuns(r.proxy.Calls()); d["RunInstances"] == 0 || d["TerminateInstances"] == 0 {
		t.Errorf("the resume's pre-flight did not try the done steps' calls (%v): the test proves nothing", d)
	}
	if c := changes(r.proxy.Calls()); len(c) > 0 {
		t.Errorf("the resume repeated calls of done steps: %v", c)
	}
}

// A resume that needs a second person (its approval is past
// approvals.ttl) runs the pre-flight too once approved: the request is
// closed as refused, saying why, and the restore stays stopped.
func TestAnApprovedResumeIsRefusedByItsPreflight(t *testing.T) {
	t.Parallel()
	r := newRestoreEnv(t, func(c *config.Config) { c.Ops.RoleARN = opsRole })
	box := r.inst.ServicesBox.ID
	op := r.stoppedAtTheStop("rpf.3")
	// Two days pass: the approval is older than approvals.ttl.
	if _, err := r.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.Created = o.Created.Add(-48 * time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r.proxy.SetFaults(roleDenies("TerminateInstances"))
	again := r.request(alice, "resume "+op.ID)
	r.proxy.Reset()
	r.click(bob, "approve "+again, "rpf.4")
	msg := r.waitText("the refused approved resume", "Request `"+again+"` was approved", "was not resumed")
	for _, want := range []string{"ec2:TerminateInstances on " + box, "UnauthorizedOperation", "resume " + op.ID + "` again", "cancel " + op.ID} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, msg)
		}
	}
	r.server.Wait()
	if c := changes(r.proxy.Calls()); len(c) > 0 {
		t.Fatalf("a refused resume let these calls through: %v", c)
	}
	if st := r.requestState(again); st != approvals.Refused {
		t.Errorf("the resume request is %s, want refused", st)
	}
	if got, _ := r.app.Journal.Get(t.Context(), op.ID); got.State != journal.Stopped {
		t.Errorf("after the refused resume: %s", got.State)
	}
	if st := r.instance(box).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Errorf("the box is %s after a refused resume", st)
	}
}
