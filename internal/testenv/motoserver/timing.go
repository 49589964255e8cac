package motoserver

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The AWS timing model: moto with state changes that take time, scaled
// down by a factor, so that a run shows where the minutes of a recovery
// go (bench/rto) without waiting them.
//
//go:embed launcher/moto_timed.py
var timedLauncher []byte

// Duration is one row of the model: how long AWS takes for one change,
// and why that number.
type Duration struct {
	Key    string        // as launcher/moto_timed.py reads it
	What   string        // what takes this long
	Real   time.Duration // on AWS (per GiB for snapshot_per_gib; a share, ×100%, for snapshot_changed)
	Source string        // a citation, or "assumption: …"
}

// Model is the one table of AWS durations. Each number is a typical
// value for an m5-class Ubuntu Services box in one zone, not a worst
// case; bench/rto prints the table next to its results.
var Model = []Duration{
	{"launch", "RunInstances: pending → running", 20 * time.Second,
		"measured: pending→running 16.4–16.6 s across t3/m6i/m7i/c7i/r7i, 25.8 s API→SSH (github.com/brevdev/ec2-coldboot-research); 20 s with a restored 100+ GiB set attached"},
	{"start", "StartInstances of a stopped box: pending → running", 20 * time.Second,
		"assumption: the launch path without the interface creation (same source as launch)"},
	{"stop", "StopInstances: stopping → stopped", 60 * time.Second,
		"assumption: a graceful OS shutdown of a box running the Replicated containers; AWS documents only that a stuck stop is forced \"after a short while\" (EC2 StopInstances API reference)"},
	{"terminate", "TerminateInstances: shutting-down → terminated", 45 * time.Second,
		"assumption: as a stop, without waiting for the volumes to be kept"},
	{"ip_release", "the terminated box's interface deleted and its private IP free", 15 * time.Second,
		"assumption: the primary ENI goes after the instance reads terminated (EC2 deletes it asynchronously)"},
	{"status_checks", "after running: both status checks initializing → ok", 120 * time.Second,
		"assumption: the console's \"2/2 checks\" some two minutes after running; AWS lists \"initializing\" as a status-check value (EC2 API reference, InstanceStatusDetails)"},
	{"agent", "after running: the SSM agent registered and taking commands", 45 * time.Second,
		"assumption: an Ubuntu boot (boot→SSH 3–9 s, brevdev/ec2-coldboot-research) plus snapd starting the agent and its first registration"},
	{"reboot_agent", "RebootInstances: the SSM agent away while the OS restarts", 60 * time.Second,
		"assumption: shutdown plus boot plus registration, as agent"},
	{"snapshot_base", "CreateSnapshot(s): pending at least", 60 * time.Second,
		"assumption: AWS says a snapshot stays pending \"until all of the data has been transferred to Amazon S3\", \"several hours\" for many modified blocks (EBS User Guide, Create snapshots)"},
	{"snapshot_per_gib", "… plus per GiB changed since the last snapshot", 8 * time.Second,
		"assumption: ~125 MiB/s to S3 per snapshot"},
	{"snapshot_changed", "the share of a volume changed since the last snapshot (×100 %)", 5 * time.Second,
		"assumption: 5 % of the Services box's data changes between hourly backups"},
	{"image", "RegisterImage from completed snapshots: pending → available", 30 * time.Second,
		"assumption: no data is copied (the image points at the snapshots)"},
	{"volume_create", "CreateVolume from a snapshot: creating → available", 10 * time.Second,
		"assumption: the volume is usable at once and its blocks load lazily on first read (EBS User Guide, Initialize Amazon EBS volumes)"},
	{"volume_attach", "AttachVolume: attaching → attached", 5 * time.Second, "assumption"},
	{"volume_detach", "DetachVolume: detaching → available", 10 * time.Second, "assumption: a stopped box's volume"},
}

// ModelDuration is the real (unscaled) duration of key in Model.
func ModelDuration(key string) time.Duration {
	for _, d := range Model {
		if d.Key == key {
			return d.Real
		}
	}
	panic("motoserver: no model duration " + key)
}

// WithTiming runs the embedded launcher/moto_timed.py: moto_patched with
// Model's durations, each multiplied by scale (1.0/60: a minute of AWS in
// a second). It implies WithPatchedSnapshots' behaviour, except that
// snapshots complete on their own as the model says.
func WithTiming(scale float64) Option {
	return func(o *options) {
		// The patched launcher's modules go beside it: it imports them.
		assets := map[string][]byte{"moto_patched.py": patchedLauncher, "moto_timed.py": timedLauncher}
		maps.Copy(assets, launcherModules)
		dir, err := writeAssets("timed", assets)
		if err != nil {
			dir = filepath.Join(os.TempDir(), "circlebot-moto-timed-unwritable", fmt.Sprintf("(%v)", err))
		}
		o.launcher = filepath.Join(dir, "moto_timed.py")
		secs := map[string]float64{}
		for _, d := range Model {
			switch d.Key {
			case "snapshot_changed":
				secs[d.Key] = d.Real.Seconds() / 100
			default:
				secs[d.Key] = d.Real.Seconds() * scale
			}
		}
		b, _ := json.Marshal(secs)
		o.extraEnv = append(o.extraEnv, "CIRCLEBOT_TIMING="+string(b))
	}
}

// writeAssets writes files side by side in one directory named after kind
// and all their contents (a script imports its neighbour).
func writeAssets(kind string, files map[string][]byte) (string, error) {
	names := slices.Sorted(maps.Keys(files))
	h := sha256.New()
	for _, name := range names {
		h.Write([]byte(name))
		h.Write(files[name])
	}
	dir := filepath.Join(os.TempDir(), "circlebot-moto-"+kind+"-"+hex.EncodeToString(h.Sum(nil)[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, name := range names {
		if _, err := writeFileIn(dir, name, files[name]); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// writeFileIn writes content as dir/name through a rename (test binaries
// may race here).
func writeFileIn(dir, name string, content []byte) (string, error) {
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && string(b) == string(content) {
		return path, nil
	}
	f, err := os.CreateTemp(dir, name+"-*.tmp")
	if err != nil {
		return "", err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return path, os.Rename(f.Name(), path)
}

// AgentStates reports, for each instance the timing model has seen change
// state, whether its SSM agent would answer now: running, and long enough
// (Model "agent") since it came up. Needs a server started WithTiming.
func (s *Server) AgentStates(ctx context.Context) (map[string]bool, error) {
	var out struct {
		Instances map[string]struct {
			State       string `json:"state"`
			AgentOnline bool   `json:"agent_online"`
		} `json:"instances"`
	}
	if err := s.control(ctx, http.MethodGet, "/_circlebot/timing", nil, &out); err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for id, in := range out.Instances {
		m[id] = in.AgentOnline
	}
	return m, nil
}

// AgentOnline says whether id's SSM agent answers in the timing model; an
// instance the model has not seen change state counts as online.
func (s *Server) AgentOnline(ctx context.Context, id string) bool {
	m, err := s.AgentStates(ctx)
	if err != nil {
		return false
	}
	on, seen := m[id]
	return !seen || on
}
