package ops

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/circlebot/circlebot/internal/journal"
)

// DefaultOSAddressCommand configures the service address in the
// replica's OS after the failover moved it at the EC2 level: EC2 puts a
// secondary IP on the interface and hot-plugs an interface, but neither
// Ubuntu (the Services box) nor Amazon Linux adds a secondary IP by
// itself, and an address that only EC2 knows answers nothing. It finds
// the device by the MAC address of the interface that holds the address
// (a hot-plugged one may take a while to appear), tells the distribution
// from /etc/os-release, and:
//
//   - Ubuntu / Debian: writes a netplan drop-in for that device (merged
//     with cloud-init's, so DHCP on the primary stays) with the address,
//     and for a moved interface DHCP with a higher route metric (the
//     default route stays on the primary), then `netplan apply`.
//   - Amazon Linux: `ip addr replace` now, and for reboots a
//     systemd-networkd drop-in for ec2-net-utils' 70-<dev>.network
//     (AL2023) or an ifcfg alias (AL2, network-scripts).
//
// It then checks that the address is on the device and prints
// service_address=… as its last line. Box paths are ${BOX_ROOT:-}/…
// (empty on a real box; the ssmbox test box's root in tests).
//
// Placeholders, in this command and in failover.os_address_command:
// {service_ip}, {prefix} (the subnet's prefix length), {mac} (of the
// interface holding the address on the replica) and {mode}
// (secondary-ip or eni).
const DefaultOSAddressCommand = `addr='{service_ip}'
cidr='{service_ip}/{prefix}'
mac='{mac}'
mode='{mode}'
root="${BOX_ROOT:-}"
dev=""
for _ in $(seq 1 60); do
  for d in "$root"/sys/class/net/*; do
    if [ -f "$d/address" ] && [ "$(tr 'A-F' 'a-f' <"$d/address")" = "$mac" ]; then dev=$(basename "$d"); fi
  done
  [ -n "$dev" ] && break
  sleep 1
done
if [ -z "$dev" ]; then echo "no network device with MAC $mac (the interface that holds $addr) after 60 s" >&2; exit 1; fi
os_id=$( . "$root/etc/os-release" 2>/dev/null; echo "${ID:-unknown}" )
os_version=$( . "$root/etc/os-release" 2>/dev/null; echo "${VERSION_ID:-}" )
case "$os_id" in
ubuntu|debian)
  f="$root/etc/netplan/90-circlebot-service-address.yaml"
  mkdir -p "$root/etc/netplan"
  {
    echo "# Written by circlebot (failover.os_address_command): the CircleCI service"
    echo "# address $addr stays on $dev across reboots."
    echo "network:"
    echo "  version: 2"
    echo "  ethernets:"
    echo "    $dev:"
    echo "      match:"
    echo "        macaddress: \"$mac\""
    echo "      set-name: $dev"
    echo "      addresses: [\"$cidr\"]"
    if [ "$mode" = eni ]; then
      echo "      dhcp4: true"
      echo "      dhcp4-overrides:"
      echo "        route-metric: 200"
    fi
  } >"$f.tmp"
  chmod 600 "$f.tmp"
  mv "$f.tmp" "$f"
  netplan apply
  how="netplan drop-in ${f#"$root"}"
  ;;
amzn)
  ip addr replace "$cidr" dev "$dev"
  if [ "${os_version%%.*}" -ge 2022 ] 2>/dev/null; then
    d="$root/etc/systemd/network/70-$dev.network.d"
    mkdir -p "$d"
    printf '[Address]\nAddress=%s\n' "$cidr" >"$d/90-circlebot-service-address.conf"
    networkctl reload
    how="systemd-networkd drop-in ${d#"$root"}"
  else
    f="$root/etc/sysconfig/network-scripts/ifcfg-$dev:circlebot"
    mkdir -p "$(dirname "$f")"
    printf 'DEVICE=%s:circlebot\nBOOTPROTO=none\nONBOOT=yes\nIPADDR=%s\nPREFIX=%s\n' "$dev" "$addr" "${cidr#*/}" >"$f"
    how="ifcfg alias ${f#"$root"}"
  fi
  ;;
*)
  echo "unsupported OS (ID=$os_id in /etc/os-release): set failover.os_address_command to a command that configures $cidr on the device with MAC $mac" >&2
  exit 1
  ;;
esac
if ! ip -o -4 addr show dev "$dev" | grep -qF " $cidr "; then
  echo "$cidr is not on $dev after configuring it ($how)" >&2
  exit 1
fi
echo "service_address=$cidr on $dev ($how)"`

// OSAddressNone turns the OS step off (failover.os_address_command:
// none): the replica's OS owns the address by other means.
const OSAddressNone = "none"

// OSAddressPlaceholders are the placeholders an os_address_command may
// use.
var OSAddressPlaceholders = []string{"{service_ip}", "{prefix}", "{mac}", "{mode}"}

var macRE = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

// osAddressScript fills in the placeholders of the plan's command. Every
// value is checked for its form first: they go into a shell script run
// as root.
func osAddressScript(p FailoverPlan) (string, error) {
	if net.ParseIP(p.ServiceIP) == nil {
		return "", fmt.Errorf("the service address %q is not an IP address", p.ServiceIP)
	}
	mac := strings.ToLower(p.ServiceMAC)
	if !macRE.MatchString(mac) {
		return "", fmt.Errorf("the MAC address %q of the interface holding %s is not one", p.ServiceMAC, p.ServiceIP)
	}
	if p.ServicePrefix < 1 || p.ServicePrefix > 32 {
		return "", fmt.Errorf("the prefix length %d of %s's subnet is not one", p.ServicePrefix, p.ServiceIP)
	}
	cmd := p.OSCommand
	if cmd == "" {
		cmd = DefaultOSAddressCommand
	}
	return strings.NewReplacer("{service_ip}", p.ServiceIP, "{prefix}", strconv.Itoa(p.ServicePrefix), "{mac}", mac, "{mode}", p.Discovery).Replace(cmd), nil
}

// osAddressSkipped says why a failover does not configure the address in
// the replica's OS ("" when it does).
func (p FailoverPlan) osAddressSkipped() string {
	switch {
	case p.Discovery != DiscoverySecondaryIP && p.Discovery != DiscoveryENI:
		return "no address moves in discovery mode " + p.Discovery
	case p.OSCommand == OSAddressNone:
		return "`failover.os_address_command` is none"
	case p.ServiceMAC == "":
		return "no SSM, or the interface holding the address is not known"
	}
	return ""
}

// OSAddress says, for the plan, what is configured where in the
// replica's OS ("" when nothing is).
func (p FailoverPlan) OSAddress() string {
	if p.osAddressSkipped() != "" {
		return ""
	}
	how := "the default: a netplan drop-in and `netplan apply` on Ubuntu, `ip addr` and a systemd-networkd drop-in (or ifcfg alias) on Amazon Linux"
	if p.OSCommand != "" {
		how = "`failover.os_address_command`"
	}
	return fmt.Sprintf("%s/%d on the replica's device with MAC %s, in its OS through SSM, kept across reboots (%s)", p.ServiceIP, p.ServicePrefix, p.ServiceMAC, how)
}

// configureOS runs the OS address command on the replica through SSM,
// once its agent answers, once per failover (runOnce).
func (f *Failover) configureOS(ctx context.Context, op *Work[FailoverResult], p FailoverPlan, pr journal.Progress) (string, error) {
	if why := p.osAddressSkipped(); why != "" {
		return "skipped: " + why, nil
	}
	if f.SSM == nil {
		return "", fmt.Errorf("the replica's OS cannot be configured: no SSM client")
	}
	script, err := osAddressScript(p)
	if err != nil {
		return "", err
	}
	if err := f.ensureFenced(ctx, p); err != nil {
		return "", err
	}
	id := p.Replica.ID
	sh := &Shell{SSM: f.SSM, Instance: id, Poll: f.poll(), KeepOnCancel: true}
	h := health{Poll: f.poll(), Deadline: time.Now().Add(cmpOr(f.HealthTimeout, 10*time.Minute)), Log: pr.Log}
	res, err := h.online(ctx, id, func() (Result, error) {
		return runOnce(ctx, op, func(r *FailoverResult) *Commands { return &r.Commands }, "os_address_command", sh, "circlebot "+op.ID+": own the service address "+p.ServiceIP, script, 5*time.Minute)
	})
	if err != nil {
		return "", fmt.Errorf("configure %s in the OS of %s: %w", p.ServiceIP, id, err)
	}
	if v := field(res.Stdout, "service_address"); v != "" {
		return fmt.Sprintf("`%s`: %s", id, v), nil
	}
	return fmt.Sprintf("`%s`: %s", id, lastLine(res.Stdout)), nil
}

// FillHealthURL fills a health URL's placeholders: {ip} the instance's own
// private IP, {service_ip} the address builders use.
func FillHealthURL(tmpl, ip, serviceIP string) string {
	if serviceIP == "" {
		serviceIP = ip
	}
	return strings.NewReplacer("{service_ip}", serviceIP, "{ip}", ip).Replace(tmpl)
}

func cmpStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
