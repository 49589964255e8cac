package ops

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// What reboot and resize share: both act on the Services box in place
// (the same instance, IP and volumes before and after), both wait for it
// to come back with the one health wait (health.go), and both state the
// downtime to expect.

// InPlace is the Services box as a reboot or resize plan found it.
type InPlace struct {
	ID           string      `json:"id"`
	State        string      `json:"state"`
	Type         string      `json:"type"`
	AZ           string      `json:"az"`
	PrivateIP    string      `json:"private_ip"`
	SecondaryIPs []string    `json:"secondary_ips,omitempty"`
	Arch         string      `json:"arch,omitempty"`
	ImageID      string      `json:"image_id,omitempty"`
	ENA          bool        `json:"ena,omitempty"` // the instance's EnaSupport attribute
	RootType     string      `json:"root_type,omitempty"`
	Volumes      []VolumeRef `json:"volumes"`
}

func inPlaceOf(in ec2types.Instance) InPlace {
	b := InPlace{ID: aws.ToString(in.InstanceId), Type: string(in.InstanceType), PrivateIP: aws.ToString(in.PrivateIpAddress),
		Arch: string(in.Architecture), ImageID: aws.ToString(in.ImageId), ENA: aws.ToBool(in.EnaSupport), RootType: string(in.RootDeviceType)}
	if in.State != nil {
		b.State = string(in.State.Name)
	}
	if in.Placement != nil {
		b.AZ = aws.ToString(in.Placement.AvailabilityZone)
	}
	for _, n := range in.NetworkInterfaces {
		for _, a := range n.PrivateIpAddresses {
			if ip := aws.ToString(a.PrivateIpAddress); !aws.ToBool(a.Primary) && ip != "" {
				b.SecondaryIPs = append(b.SecondaryIPs, ip)
			}
		}
	}
	slices.Sort(b.SecondaryIPs)
	b.Volumes = volumesOf(in)
	return b
}

func volumesOf(in ec2types.Instance) []VolumeRef {
	var vols []VolumeRef
	for _, m := range in.BlockDeviceMappings {
		if m.Ebs != nil {
			vols = append(vols, VolumeRef{ID: aws.ToString(m.Ebs.VolumeId), Device: aws.ToString(m.DeviceName), DeleteOnTermination: aws.ToBool(m.Ebs.DeleteOnTermination)})
		}
	}
	slices.SortFunc(vols, func(a, b VolumeRef) int { return strings.Compare(a.Device, b.Device) })
	return vols
}

// VolumeList is "vol-1 (/dev/sda1), vol-2 (/dev/sdf)".
func (b InPlace) VolumeList() string {
	var s []string
	for _, v := range b.Volumes {
		s = append(s, fmt.Sprintf("`%s` (%s)", v.ID, v.Device))
	}
	return strings.Join(s, ", ")
}

func (b InPlace) volumeFact() string {
	var s []string
	for _, v := range b.Volumes {
		s = append(s, v.Device+"="+v.ID)
	}
	return strings.Join(s, ",")
}

// findInPlace reads the Services box for a plan; no box, or several, is a
// refusal a person can act on.
func findInPlace(ctx context.Context, api EC2, nameTag, what string) (InPlace, error) {
	in, err := FindBox(ctx, api, nameTag)
	var amb *AmbiguousError
	switch {
	case errors.Is(err, ErrNotFound):
		return InPlace{}, refusef("no instance is tagged Name=%s: there is no Services box to %s. Nothing was requested.", nameTag, what)
	case errors.As(err, &amb):
		return InPlace{}, refusef("%s. Nothing was requested.", strings.TrimSuffix(amb.Error(), "."))
	case err != nil:
		return InPlace{}, err
	}
	return inPlaceOf(in), nil
}

// Downtime is what a plan says to expect: the last measured run of the
// same kind, or nothing (the plan then states its default).
type Downtime struct {
	Took time.Duration `json:"took,omitempty"`
	Op   string        `json:"op,omitempty"`
	At   time.Time     `json:"at,omitzero"`
}

// Expect is the plan's line on downtime.
func (d Downtime) Expect(what string, def time.Duration) string {
	if d.Op == "" {
		return fmt.Sprintf("expected downtime: about %s — a default, as no %s by the bot has been measured yet", Span(def), what)
	}
	return fmt.Sprintf("expected downtime: about %s, as the last %s took (`%s`, %s UTC)", Span(d.Took), what, d.Op, d.At.UTC().Format("2006-01-02 15:04"))
}

// Default downtimes, until a run has been measured.
const (
	DefaultRebootDowntime = 5 * time.Minute
	DefaultResizeDowntime = 10 * time.Minute
)

// boxWork is what reboot and resize wait and verify with.
type boxWork struct {
	EC2       EC2
	SSM       SSM
	HTTP      *http.Client
	HealthURL string
	Poll      time.Duration
	Timeout   time.Duration // the health wait: agent, status checks, HTTP
}

// rebootedExit is the exit code of the boot check on a box that has not
// rebooted yet.
const rebootedExit = 75

// bootSkew is how much earlier than the reboot request the box's boot
// may seem and still count: the box's clock and the bot's differ by this
// much at most (both on NTP; a real reboot boots seconds after the call).
const bootSkew = 15 * time.Second

// bootScript prints the box's boot time (btime in /proc/stat, epoch
// seconds) and fails with rebootedExit while it is before after.
func bootScript(after time.Time) string {
	return fmt.Sprintf(`boot=$(awk '/^btime / {print $2}' "${BOX_ROOT:-}/proc/stat")
echo "boot=$boot"
if [ "$boot" -lt %d ]; then
  echo "booted at $(date -u -d "@$boot" '+%%Y-%%m-%%d %%H:%%M:%%SZ' 2>/dev/null || echo "$boot"), before the reboot was asked for" >&2
  exit %d
fi`, after.Add(-bootSkew).Unix(), rebootedExit)
}

// waitRebooted waits until the box answers SSM with a boot time after
// the reboot was sent: the one proof that it rebooted (EC2's state stays
// running through a reboot, and its status checks lag by minutes). It
// waits for the agent first, as a box coming up registers late.
func (b boxWork) waitRebooted(ctx context.Context, opID, id string, sent time.Time, pr journal.Progress) (time.Time, error) {
	h := health{Poll: b.Poll, Deadline: time.Now().Add(b.Timeout), Log: pr.Log}
	sh := &Shell{SSM: b.SSM, Instance: id, Poll: b.Poll}
	noted := false
	for {
		res, err := h.online(ctx, id, func() (Result, error) {
			return sh.Run(ctx, "circlebot "+opID+": has the box rebooted?", bootScript(sent), 2*time.Minute)
		})
		if err == nil {
			var boot int64
			if _, serr := fmt.Sscan(field(res.Stdout, "boot"), &boot); serr != nil {
				return time.Time{}, fmt.Errorf("read the boot time of %s: %q", id, lastLine(res.Stdout))
			}
			return time.Unix(boot, 0), nil
		}
		if !errors.Is(err, ErrRemote) || res.Code != rebootedExit {
			return time.Time{}, fmt.Errorf("check that %s rebooted: %w", id, err)
		}
		if time.Now().After(h.Deadline) {
			return time.Time{}, fmt.Errorf("%s has not rebooted %s after the reboot was sent: its SSM agent still reports the old boot (%s)", id, Span(b.Timeout), lastLine(res.Stderr))
		}
		if !noted {
			pr.Log(fmt.Sprintf("`%s` has not gone down yet (%s); waiting.", id, lastLine(res.Stderr)))
			noted = true
		}
		// Each check is a new SSM command: the poll's pace.
		if err := sleep(ctx, h.poll()); err != nil {
			return time.Time{}, err
		}
	}
}

// verify waits for the box's status checks and its health URL, and
// checks it is the same box: the private IP and volumes of the plan, the
// instance type wanted.
func (b boxWork) verify(ctx context.Context, p InPlace, wantType string, pr journal.Progress) (string, error) {
	start := time.Now()
	url := FillHealthURL(b.HealthURL, p.PrivateIP, firstOf(p.SecondaryIPs))
	h := health{EC2: b.EC2, HTTP: b.HTTP, Poll: b.Poll, Deadline: start.Add(b.Timeout), Log: pr.Log}
	if err := h.wait(ctx, p.ID, url); err != nil {
		return "", fmt.Errorf("the Services box is not healthy after %s: %w", since(start), err)
	}
	in, ok, err := describeInstance(ctx, b.EC2, p.ID)
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", fmt.Errorf("%s is gone", p.ID)
	}
	now := inPlaceOf(in)
	var wrong []string
	if now.PrivateIP != p.PrivateIP {
		wrong = append(wrong, fmt.Sprintf("its private IP is %s, not %s", now.PrivateIP, p.PrivateIP))
	}
	if !slices.Equal(ids(now.Volumes), ids(p.Volumes)) {
		wrong = append(wrong, fmt.Sprintf("its volumes are %s, not %s", now.VolumeList(), p.VolumeList()))
	}
	if wantType != "" && now.Type != wantType {
		wrong = append(wrong, fmt.Sprintf("it is %s, not %s", now.Type, wantType))
	}
	if len(wrong) > 0 {
		return "", fmt.Errorf("`%s` is not the box it was: %s", p.ID, strings.Join(wrong, "; "))
	}
	d := fmt.Sprintf("`%s` (%s) status checks pass", p.ID, now.Type)
	if url != "" {
		d += ", " + url + " answers"
	}
	return d + fmt.Sprintf("; same private IP %s and volumes", p.PrivateIP), nil
}

func ids(vols []VolumeRef) []string {
	var s []string
	for _, v := range vols {
		s = append(s, v.ID)
	}
	slices.Sort(s)
	return s
}
