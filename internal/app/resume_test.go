package app_test

import (
	"strings"
	"testing"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
)

// A failover approved during an outage stops at its fence. Days later one
// operator types resume: that is a new decision, so it becomes a request
// that a second person must approve, and nothing is stopped or moved
// until then.
func TestResumeOfAStaleFailoverAsksASecondPersonAgain(t *testing.T) {
	f := newFailoverEnv(t, nil)
	primary := f.inst.ServicesBox.ID
	req := f.request(alice, "failover --to "+f.standby)
	f.proxy.SetFaults(faultproxy.Faults{Deny: func(c faultproxy.Call) bool { return c.Action == "StopInstances" && c.Params.Get("DryRun") != "true" }})
	f.click(bob, "approve "+req, "rs.1")
	f.waitText("the failover stopped at its fence", "Later steps did not run")
	f.server.Wait()
	f.proxy.SetFaults(faultproxy.Faults{})
	op, err := f.app.Journal.ByRequest(t.Context(), req)
	if err != nil || op.State != journal.Stopped || op.Next() != 0 {
		t.Fatalf("after the refused fence: %+v, %v", op, err)
	}
	// Two days pass: the approval is older than approvals.ttl.
	if _, err := f.app.Journal.Update(t.Context(), op.ID, func(o *journal.Op) error {
		o.Created = o.Created.Add(-48 * time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.proxy.Reset()
	again := f.request(alice, "resume "+op.ID)
	plan := f.waitText("the resume request", again, "Approval needed")
	for _, want := range []string{"continue `" + op.ID + "`", "longer than `approvals.ttl`", "Fence the old primary"} {
		if !strings.Contains(plan, want) {
			t.Errorf("the resume request lacks %q:\n%s", want, plan)
		}
	}
	if calls := f.proxy.Calls(); callIndex(calls, "StopInstances", primary) >= 0 || callIndex(calls, "AssignPrivateIpAddresses", f.inst.ServicesBox.SecondaryIP) >= 0 {
		t.Fatalf("a resume nobody approved touched AWS: %+v", calls)
	}
	if st := f.instance(primary).State.Name; st != ec2types.InstanceStateNameRunning {
		t.Fatalf("the primary is %s before anyone approved the resume", st)
	}
	if op, _ := f.app.Journal.Get(t.Context(), op.ID); op.State != journal.Stopped {
		t.Fatalf("the operation is %s before anyone approved the resume", op.State)
	}
	// A second person approves that exact plan: the failover goes on from
	// its fence and finishes.
	f.click(bob, "approve "+again, "rs.2")
	f.waitText("summary", "The Services box is now `"+f.standby+"`")
	f.server.Wait()
	if st := f.instance(primary).State.Name; st != ec2types.InstanceStateNameStopped {
		t.Errorf("old primary is %s after the approved resume", st)
	}
}
