package app_test

import (
	"strings"
	"testing"
	"time"
)

// AWS's reads lag its writes. These run with the test moto answering
// every read as it was before the last mutation, for 2 s after it
// (motoserver.Lagged): a read-back that does not retry until it
// converges stops the operation mid-way. (CIRCLEBOT_TEST_LAG=2s runs
// every end-to-end test so.)
const testLag = 2 * time.Second

func TestRestoreUnderAWSReadLag(t *testing.T) {
	t.Parallel()
	withLag(t, testLag)
	r := newRestoreEnv(t, nil)
	req := r.request(alice, "restore latest --rebuild")
	r.click(bob, "approve "+req, "lag.1")
	sum := r.waitText("summary", "Restored `"+r.backup.ID+"`")
	r.server.Wait()
	r.checkRestored()
	if !strings.Contains(sum, "Restored") {
		t.Errorf("summary: %s", sum)
	}
	if n := r.staleReads(); n == 0 {
		t.Error("the lag proxy answered no read from before a mutation: the test did not exercise lag")
	}
}

func TestFailoverUnderAWSReadLag(t *testing.T) {
	t.Parallel()
	withLag(t, testLag)
	f := newFailoverEnv(t, nil)
	ip := f.inst.ServicesBox.SecondaryIP
	req := f.request(alice, "failover --to "+f.standby)
	f.click(bob, "approve "+req, "lag.fo.1")
	f.waitText("summary", "The Services box is now `"+f.standby+"`")
	f.server.Wait()
	if got := f.holdersOf(ip); len(got) != 1 || got[0] != f.standby {
		t.Errorf("%s is held by %v, want only the standby %s", ip, got, f.standby)
	}
	if n := f.staleReads(); n == 0 {
		t.Error("the lag proxy answered no read from before a mutation: the test did not exercise lag")
	}
}
