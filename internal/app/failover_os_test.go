package app_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circlebot/circlebot/internal/config"
)

// EC2 moving the secondary IP is not enough: the replica's OS must own
// it, or builders reach nothing. The health URL probes {service_ip}, the
// address builders use, and here it answers only once the standby's OS
// (the ssmbox test box) has the address: the failover is healthy only
// because the OS step configured it, and the command that ran is the
// one the plan named.
func TestFailoverMakesTheReplicasOSOwnTheServiceAddress(t *testing.T) {
	t.Parallel()
	var (
		mu     sync.Mutex
		f      *failoverEnv
		probes []string
	)
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := r.URL.Query().Get("ip")
		mu.Lock()
		probes = append(probes, ip)
		env := f
		mu.Unlock()
		if env == nil || env.ssm.Box(env.standby) == nil || !env.ssm.Box(env.standby).HasAddress(ip) {
			http.Error(w, ip+" answers nothing", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(health.Close)
	fe := newFailoverEnv(t, func(c *config.Config) {
		c.Failover.HealthURL = health.URL + "/healthz?ip={service_ip}"
		c.Failover.HealthTimeout = config.Duration(20 * time.Second)
	})
	mu.Lock()
	f = fe
	mu.Unlock()
	ip := f.inst.ServicesBox.SecondaryIP
	req := f.request(alice, "failover --to "+f.standby)
	plan := f.waitText("plan", req, "Approval needed")
	for _, want := range []string{"configure " + ip + "/24 on the replica's device with MAC", "netplan", health.URL + "/healthz?ip=" + ip} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	f.click(bob, "approve "+req, "os.1")
	sum := f.waitText("summary", "The Services box is now `"+f.standby+"`")
	f.server.Wait()
	if !strings.Contains(sum, ip+"/24 on ens5 (netplan drop-in /etc/netplan/90-circlebot-service-address.yaml)") {
		t.Errorf("summary does not say what was configured:\n%s", sum)
	}
	box := f.ssm.Box(f.standby)
	if got := box.Addresses("ens5"); !slices.Contains(got, ip+"/24") {
		t.Errorf("the standby's OS has %v on ens5, want %s/24", got, ip)
	}
	raw, err := os.ReadFile(box.Path("/etc/netplan/90-circlebot-service-address.yaml"))
	if err != nil || !strings.Contains(string(raw), `addresses: ["`+ip+`/24"]`) {
		t.Errorf("netplan drop-in: %v\n%s", err, raw)
	}
	var ran string
	for _, c := range f.ssm.Commands() {
		if slices.Equal(c.InstanceIDs, []string{f.standby}) && strings.Contains(strings.Join(c.Lines, "\n"), "netplan apply") {
			ran = strings.Join(c.Lines, "\n")
		}
	}
	if !strings.Contains(ran, "addr='"+ip+"'") {
		t.Errorf("no OS address command for %s ran on the standby; commands: %+v", ip, f.ssm.Commands())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(probes) == 0 || probes[len(probes)-1] != ip {
		t.Errorf("health probes %v, want the service address %s", probes, ip)
	}
}
