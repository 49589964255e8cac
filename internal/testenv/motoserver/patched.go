package motoserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// patchedLauncher is moto_server with EBS snapshots that stay pending and a
// control API under /_circlebot/ (see the script's docstring).
//
//go:embed launcher/moto_patched.py
var patchedLauncher []byte

// launcherHeader is set on every /_circlebot/ answer of the patched launcher.
const launcherHeader = "X-Circlebot-Launcher"

// WithPatchedSnapshots runs the embedded launcher/moto_patched.py instead of
// plain moto_server. It accepts the same flags and serves the same APIs,
// except that snapshots made by CreateSnapshot and CreateSnapshots start in
// State "pending", Progress "0%", and stay there until a test moves them with
// SetSnapshotState or AutoCompleteSnapshots. Snapshots moto makes behind an
// AMI, and CopySnapshot copies, stay "completed" as in plain moto.
//
// Its CloudFormation is stricter too, as AWS is (see the script: NoValue in
// lists, inline role policies as JSON, a table's PITR, alarms, and a
// resource type moto cannot create failing the stack); deploy/cloudformation's
// stack test relies on it.
//
// The script is written once per content hash to its own directory under
// os.TempDir() (its own directory, because Python puts the script's
// directory first on sys.path) and left there for later runs.
func WithPatchedSnapshots() Option {
	return func(o *options) {
		path, err := writeLauncher()
		if err != nil {
			// Start's os.Stat of the launcher then fails and reports the path;
			// keep the real cause in the name so it is not lost.
			path = filepath.Join(os.TempDir(), "circlebot-moto-launcher-unwritable", fmt.Sprintf("(%v)", err))
		}
		o.launcher = path
	}
}

// classicAMIs is moto 5.2.1's moto/ec2/resources/amis.json (Apache-2.0):
// 44 stock AMIs of several owners, among them the Ubuntu 16.04 image the
// sandbox launches.
//
//go:embed launcher/amis.json
var classicAMIs []byte

// WithClassicAMIs makes moto load only the 44 stock AMIs of its classic
// catalogue (embedded launcher/amis.json, passed as $MOTO_AMIS_PATH) rather
// than also the region's latest and ECS-optimized ones (about 1,130 in
// us-east-1). Each stock AMI comes with a snapshot owned by its vendor, and
// moto filters snapshots in Python one by one: with the full catalogue a
// DescribeSnapshots with a tag filter costs ~115 ms of moto CPU, with the
// classic one ~8 ms. Snapshots of other owners are still there for code
// that must tell them from its own. ForTest always applies it.
func WithClassicAMIs() Option {
	return func(o *options) {
		path, err := writeAsset("amis", "amis.json", classicAMIs)
		if err != nil {
			// moto then fails to start and its log names the path.
			path = filepath.Join(os.TempDir(), "circlebot-moto-amis-unwritable", fmt.Sprintf("(%v)", err))
		}
		o.amis = path
	}
}

// writeAsset writes content as name in a directory of its own under
// os.TempDir(), named after kind and the content's hash, unless it is
// there already, and returns its path.
func writeAsset(kind, name string, content []byte) (string, error) {
	sum := sha256.Sum256(content)
	dir := filepath.Join(os.TempDir(), "circlebot-moto-"+kind+"-"+hex.EncodeToString(sum[:8]))
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, content) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages may race here: write a private file
	// and rename it into place, which is atomic.
	f, err := os.CreateTemp(dir, name+"-*.tmp")
	if err != nil {
		return "", err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
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
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return path, nil
}

// Snapshot states accepted by SetSnapshotState (the EC2 SnapshotState values).
const (
	SnapshotPending   = "pending"
	SnapshotCompleted = "completed"
	SnapshotError     = "error"
)

// SnapshotStatus is one snapshot as the patched launcher's
// GET /_circlebot/snapshots reports it.
type SnapshotStatus struct {
	SnapshotID string `json:"snapshot_id"`
	State      string `json:"state"`
	Progress   string `json:"progress"`
	VolumeID   string `json:"volume_id"`
	AccountID  string `json:"account_id"`
	Region     string `json:"region"`
	// Describes counts the DescribeSnapshots calls that returned the
	// snapshot while auto-complete was on.
	Describes int `json:"describes"`
}

// SetSnapshotState moves an EBS snapshot to state (SnapshotPending,
// SnapshotCompleted or SnapshotError) with the given progress such as "45%".
// An empty progress means "100%" for completed and "unchanged" otherwise.
// It needs a server started WithPatchedSnapshots.
func (s *Server) SetSnapshotState(ctx context.Context, snapshotID, state, progress string) error {
	body := map[string]string{"snapshot_id": snapshotID, "state": state}
	if progress != "" {
		body["progress"] = progress
	}
	return s.control(ctx, http.MethodPost, "/_circlebot/snapshots", body, nil)
}

// AutoCompleteSnapshots makes every pending snapshot completed (100%) once
// afterDescribes DescribeSnapshots calls have returned it: with 2, the first
// two calls show it pending and the third completed. Counting restarts at
// each call of AutoCompleteSnapshots; 0 turns the mode off. Reset turns it
// off too. It needs a server started WithPatchedSnapshots.
func (s *Server) AutoCompleteSnapshots(ctx context.Context, afterDescribes int) error {
	if afterDescribes < 0 {
		return fmt.Errorf("motoserver: AutoCompleteSnapshots(%d): must be >= 0", afterDescribes)
	}
	return s.control(ctx, http.MethodPost, "/_circlebot/snapshots/auto",
		map[string]int{"complete_after_describes": afterDescribes}, nil)
}

// SetUnavailableTypes makes RunInstances of these instance types, and
// StartInstances of a stopped instance of one of them, answer
// InsufficientInstanceCapacity, as AWS does when a zone has run out; an
// empty list clears it. It needs a server started WithPatchedSnapshots
// (whose launcher also frees a terminated instance's private IP, honours
// ClientToken and RegisterImage's block-device mappings, and refuses
// ModifyInstanceAttribute InstanceType on an instance that is not stopped,
// as AWS does and plain moto does not).
func (s *Server) SetUnavailableTypes(ctx context.Context, types ...string) error {
	if types == nil {
		types = []string{}
	}
	return s.control(ctx, http.MethodPost, "/_circlebot/capacity", map[string][]string{"unavailable": types}, nil)
}

// SetImagesPending makes images registered from now on stay "pending"
// (true), or makes every image held pending available (false), as a
// large first image does on AWS for a long time. It needs a server
// started WithPatchedSnapshots.
func (s *Server) SetImagesPending(ctx context.Context, pending bool) error {
	return s.control(ctx, http.MethodPost, "/_circlebot/images", map[string]bool{"pending": pending}, nil)
}

// SnapshotStates lists every EBS snapshot in every account and region with
// its state and progress, for debugging. It needs a server started
// WithPatchedSnapshots.
func (s *Server) SnapshotStates(ctx context.Context) ([]SnapshotStatus, error) {
	var out struct {
		Snapshots []SnapshotStatus `json:"snapshots"`
	}
	if err := s.control(ctx, http.MethodGet, "/_circlebot/snapshots", nil, &out); err != nil {
		return nil, err
	}
	return out.Snapshots, nil
}

func (s *Server) control(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("motoserver: %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, body)
	if err != nil {
		return fmt.Errorf("motoserver: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("motoserver: %s %s%s: %w", method, s.URL, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.Header.Get(launcherHeader) == "" {
		return fmt.Errorf("motoserver: %s %s: not the patched launcher (start the server with WithPatchedSnapshots): HTTP %d", method, path, resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("motoserver: %s %s: HTTP %d: %s", method, path, resp.StatusCode, e.Error)
		}
		return fmt.Errorf("motoserver: %s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("motoserver: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// SetSnapshotProgress holds an EBS snapshot pending at progress (such as
// "40%") with its StartTime startedAgo in the past: a rate of progress a
// caller estimates the time still needed from, without the test waiting
// for that time. It needs a server started WithPatchedSnapshots.
func (s *Server) SetSnapshotProgress(ctx context.Context, snapshotID, progress string, startedAgo time.Duration) error {
	body := map[string]any{"snapshot_id": snapshotID, "state": SnapshotPending, "progress": progress, "started_ago": startedAgo.Seconds()}
	return s.control(ctx, http.MethodPost, "/_circlebot/snapshots", body, nil)
}
