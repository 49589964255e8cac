package ops

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/ssmbox"
)

// The default OS address command, run for real on ssmbox test boxes of
// each distribution: it finds the device by MAC, configures the address
// the distribution's way (kept across reboots), and checks it is there.
func TestDefaultOSAddressCommandOnEachDistribution(t *testing.T) {
	t.Parallel()
	const mac = "0a:1b:2c:3d:4e:5f"
	for _, tc := range []struct {
		name, os, version, mode string
		file, inFile            string // the persistent config it leaves
		logFile, logged         string
		fail                    string
	}{
		{name: "ubuntu secondary-ip", os: "ubuntu", version: "22.04", mode: DiscoverySecondaryIP,
			file: "/etc/netplan/90-circlebot-service-address.yaml", inFile: `addresses: ["10.0.1.100/24"]`, logFile: "netplan.log", logged: "netplan apply"},
		{name: "ubuntu eni", os: "ubuntu", version: "22.04", mode: DiscoveryENI,
			file: "/etc/netplan/90-circlebot-service-address.yaml", inFile: "route-metric: 200", logFile: "netplan.log", logged: "netplan apply"},
		{name: "amazon linux 2023", os: "amzn", version: "2023", mode: DiscoverySecondaryIP,
			file: "/etc/systemd/network/70-ens5.network.d/90-circlebot-service-address.conf", inFile: "Address=10.0.1.100/24", logFile: "networkctl.log", logged: "networkctl reload"},
		{name: "amazon linux 2", os: "amzn", version: "2", mode: DiscoverySecondaryIP,
			file: "/etc/sysconfig/network-scripts/ifcfg-ens5:circlebot", inFile: "IPADDR=10.0.1.100", logFile: "ip.log", logged: "ip addr replace 10.0.1.100/24 dev ens5"},
		{name: "unknown OS", os: "arch", version: "", mode: DiscoverySecondaryIP, fail: "unsupported OS (ID=arch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := ssmbox.New(t)
			box := srv.AddBox("i-0123456789abcdef0")
			box.SetOS(tc.os, tc.version)
			box.SetInterface("ens5", strings.ToUpper(mac), "10.0.1.20/24")
			box.SetInterface("lo", "00:00:00:00:00:00", "127.0.0.1/8")
			p := FailoverPlan{Discovery: tc.mode, ServiceIP: "10.0.1.100", ServicePrefix: 24, ServiceMAC: mac}
			script, err := osAddressScript(p)
			if err != nil {
				t.Fatal(err)
			}
			sh := &Shell{SSM: ssm.NewFromConfig(motoserver.AWSConfig(srv.URL)), Instance: box.InstanceID(), Poll: 10 * time.Millisecond}
			res, err := sh.Run(context.Background(), "own the service address", script, time.Minute)
			if tc.fail != "" {
				if !errors.Is(err, ErrRemote) || !strings.Contains(res.Stderr, tc.fail) {
					t.Fatalf("%v; stderr %q, want %q", err, res.Stderr, tc.fail)
				}
				if box.HasAddress("10.0.1.100") {
					t.Error("an unsupported OS got the address")
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\nstderr: %s", err, res.Stderr)
			}
			if got := field(res.Stdout, "service_address"); !strings.HasPrefix(got, "10.0.1.100/24 on ens5") {
				t.Errorf("service_address=%q", got)
			}
			if got := box.Addresses("ens5"); !slices.Contains(got, "10.0.1.100/24") || !slices.Contains(got, "10.0.1.20/24") {
				t.Errorf("ens5 has %v", got)
			}
			if got := box.Addresses("lo"); slices.Contains(got, "10.0.1.100/24") {
				t.Errorf("lo got the address: %v", got)
			}
			raw, err := os.ReadFile(box.Path(tc.file))
			if err != nil || !strings.Contains(string(raw), tc.inFile) {
				t.Errorf("%s: %v\n%s\nwant %q", tc.file, err, raw, tc.inFile)
			}
			if log, _ := os.ReadFile(box.Path("/.ssmbox/" + tc.logFile)); !strings.Contains(string(log), tc.logged) {
				t.Errorf("%s: %q, want %q", tc.logFile, log, tc.logged)
			}
			// Run again (a resumed step): the same end state, no error.
			if _, err := sh.Run(context.Background(), "again", script, time.Minute); err != nil {
				t.Errorf("second run: %v", err)
			}
			if got := box.Addresses("ens5"); len(got) != 2 {
				t.Errorf("after a second run ens5 has %v", got)
			}
		})
	}
}

func TestOSAddressScriptChecksWhatGoesIntoTheShell(t *testing.T) {
	ok := FailoverPlan{Discovery: DiscoverySecondaryIP, ServiceIP: "10.0.1.100", ServicePrefix: 24, ServiceMAC: "0A:1B:2C:3D:4E:5F", OSCommand: "configure {service_ip}/{prefix} on {mac} ({mode})"}
	if s, err := osAddressScript(ok); err != nil || s != "configure 10.0.1.100/24 on 0a:1b:2c:3d:4e:5f (secondary-ip)" {
		t.Errorf("%q %v", s, err)
	}
	for _, bad := range []func(*FailoverPlan){
		func(p *FailoverPlan) { p.ServiceIP = "10.0.1.100; rm -rf /" },
		func(p *FailoverPlan) { p.ServiceMAC = "$(reboot)" },
		func(p *FailoverPlan) { p.ServicePrefix = 0 },
	} {
		p := ok
		bad(&p)
		if s, err := osAddressScript(p); err == nil {
			t.Errorf("%+v gave %q", p, s)
		}
	}
	if got := FillHealthURL("http://{service_ip}/x?from={ip}", "10.0.1.20", "10.0.1.100"); got != "http://10.0.1.100/x?from=10.0.1.20" {
		t.Error(got)
	}
	if got := FillHealthURL("http://{service_ip}/", "10.0.1.20", ""); got != "http://10.0.1.20/" {
		t.Error(got)
	}
}
