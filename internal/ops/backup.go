package ops

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/journal"
)

// BackupEC2 is the part of EC2 an EBS backup uses.
type BackupEC2 interface {
	EC2
	CreateSnapshots(context.Context, *ec2.CreateSnapshotsInput, ...func(*ec2.Options)) (*ec2.CreateSnapshotsOutput, error)
	CreateSnapshot(context.Context, *ec2.CreateSnapshotInput, ...func(*ec2.Options)) (*ec2.CreateSnapshotOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
}

// Progress is how an operation reports while it runs; progress.Stream is
// the real one. Every method must return at once.
type Progress interface {
	Begin(step int, detail string)
	Done(step int, detail string)
	Skip(step int, why string)
	Fail(step int, err error)
	Progress(step int, pct float64, detail string)
	Log(line string)
}

// Tag keys the bot writes on what it makes. Retention prunes only
// snapshots carrying TagBackupID, so a hand-made snapshot is never pruned.
const (
	TagBackupID  = "circlebot:backup-id"
	TagInstance  = "circlebot:source-instance"
	TagVolume    = "circlebot:volume"
	TagDevice    = "circlebot:device"
	TagPrivateIP = "circlebot:private-ip"
	TagType      = "circlebot:instance-type"
	TagRequester = "circlebot:requester"
	TagTrigger   = "circlebot:trigger"
	TagVersion   = "circlebot:version"
)

// Backup methods: EBS snapshots of every volume, or the circleci-backup
// tarball in S3.
const (
	MethodEBS     = "ebs"
	MethodTarball = "tarball"
)

// Backup states.
const (
	StateRunning     = "running"
	StateCompleted   = "completed"
	StateFailed      = "failed"
	StateInterrupted = "interrupted"
)

// Shape is how the Services box was launched: what a restore needs to
// launch its replacement the same way (the seed: "saving the private IP
// simplifies restore significantly").
type Shape struct {
	InstanceID     string            `json:"instance_id"`
	Type           string            `json:"type"`
	PrivateIP      string            `json:"private_ip"`
	SecondaryIPs   []string          `json:"secondary_ips,omitempty"`
	SubnetID       string            `json:"subnet_id"`
	AZ             string            `json:"az"`
	SecurityGroups []string          `json:"security_groups"`
	IAMProfile     string            `json:"iam_profile,omitempty"`
	ImageID        string            `json:"image_id"`
	KeyName        string            `json:"key_name,omitempty"`
	RootDevice     string            `json:"root_device"`
	Architecture   string            `json:"architecture,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	// Volumes are the box's EBS volumes as the backup found them, in
	// device order, and Boot how it boots: what a restore registers its
	// image and launches with. Records made before they were kept have
	// neither; a restore then reads what it can (volumes.go).
	Volumes []VolumeSpec `json:"volumes,omitempty"`
	Boot    *BootSpec    `json:"boot,omitempty"`
}

type SnapshotRef struct {
	ID       string `json:"id"`
	VolumeID string `json:"volume_id"`
	Device   string `json:"device"`
	SizeGiB  int32  `json:"size_gib"`
	State    string `json:"state"`
	Progress string `json:"progress"`
}

// Backup is one restore point as the bot recorded it.
type Backup struct {
	ID        string `json:"id"`
	Method    string `json:"method"` // ebs | tarball
	State     string `json:"state"`
	Trigger   string `json:"trigger"` // manual | scheduled
	Requester string `json:"requester"`
	// Reason is why it was taken, when the caller said (the backup API).
	Reason    string        `json:"reason,omitempty"`
	Channel   string        `json:"channel,omitempty"`
	Started   time.Time     `json:"started"`
	Finished  time.Time     `json:"finished,omitzero"`
	Error     string        `json:"error,omitempty"`
	Version   string        `json:"version"`
	Shape     Shape         `json:"shape"`
	Snapshots []SnapshotRef `json:"snapshots,omitempty"`
	// Tarball backups.
	Bucket string `json:"bucket,omitempty"`
	Key    string `json:"key,omitempty"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// UploadID is the S3 multipart upload and CommandID the latest SSM
	// command of a tarball backup: what to abort or cancel by hand if the
	// bot dies mid-way.
	UploadID  string `json:"upload_id,omitempty"`
	CommandID string `json:"command_id,omitempty"`
	// Notes are warnings worth keeping with the record (e.g. not crash-consistent).
	Notes []string `json:"notes,omitempty"`
	// Pruning is the operation (op-…) that began deleting this set's
	// snapshots, recorded before it deleted any. State stays as it was (a
	// completed backup was a restore point until then, which the report's
	// history keeps); RestorePoints calls the set partly pruned once a
	// snapshot is gone, and the next prune deletes the rest.
	Pruning string `json:"pruning,omitempty"`
}

// SizeGiB is the provisioned size of all volumes in the set.
func (b *Backup) SizeGiB() int32 {
	var n int32
	for _, s := range b.Snapshots {
		n += s.SizeGiB
	}
	return n
}

// NewBackupID makes a sortable, unique ID: bk-YYYYMMDD-HHMMSS-xxxx (UTC).
func NewBackupID(t time.Time) string {
	var r [2]byte
	_, _ = rand.Read(r[:])
	return "bk-" + t.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(r[:])
}

// BackupDescription is the seed runbook's description form, so the
// runbook's own `describe-snapshots --filters Name=description,Values=CircleCI*`
// finds the bot's backups too.
func BackupDescription(t time.Time) string {
	return BackupDescriptionPrefix + " taken at " + t.UTC().Format(time.RFC1123)
}

// RecordStore keeps backup records durable before and after each step.
type RecordStore interface {
	SaveBackup(context.Context, *Backup) error
}

// EBSBackup snapshots every volume of the Services box as one
// crash-consistent set and follows it to completion.
type EBSBackup struct {
	EC2     BackupEC2
	Records RecordStore
	NameTag string
	Version string
	// PollMin and PollMax bound the adaptive poll of snapshot state; the
	// SDK waiter's 15 s minimum would notice completion late and hides
	// permission errors as time-outs.
	PollMin, PollMax time.Duration
	// Retry is the backoff between attempts of a throttled create.
	Retry    time.Duration
	Attempts int
	Now      func() time.Time
}

func (e *EBSBackup) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// BackupRequest says who asked for a backup and where it reports.
type BackupRequest struct {
	Trigger   string // manual | scheduled | api
	Requester string // a Slack user ID, or "scheduler"
	Channel   string
	Reason    string // why, when the caller said (the backup API)
}

// BackupWork is what a backup's steps hand on to each other (the
// journal keeps it): the backup's record — the catalogue entry `backup
// list`, the report and retention read, saved to the store as it changes
// — and what a step run again after a crash must know.
type BackupWork struct {
	Record Backup `json:"record"`
	// Sent: the snapshot set was asked for (journaled before the call).
	// The step run again after a crash or a lost answer adopts what that
	// call made, found by the backup's tag, instead of asking blind.
	Sent bool `json:"sent,omitempty"`
	// Tarball backups: the scratch directory may exist on the box, and
	// the composite SHA-256 S3 must report for the uploaded object (the
	// box's part checksums combined).
	Scratch      bool   `json:"scratch,omitempty"`
	WantChecksum string `json:"want_checksum,omitempty"`

	saver func() error // journals the work now (nil: run without a journal)
}

// save makes the work durable before the step ends.
func (w *BackupWork) save() error {
	if w.saver == nil {
		return nil
	}
	return w.saver()
}

// backupStep is one step of a backup: a name and what it does to the
// backup's work. The same steps run journaled (Steps, under the engine)
// and directly (Run).
type backupStep struct {
	name string
	run  func(ctx context.Context, w *BackupWork, p Progress) (string, error)
}

// EBS backup steps, as shown in the progress message.
var EBSSteps = []string{"Find the Services box", "Snapshot every volume", "Tag each snapshot with its device", "Wait for the snapshots to complete", "Record the restore point"}

// perVolumeNote marks a set made one snapshot per volume: each carries
// its volume and device tags from its create call.
const perVolumeNote = "per-volume snapshots: not crash-consistent across volumes"

// ebsWaitStep is the step that follows the snapshots: where a backup cut
// off by a restart is taken up again.
const ebsWaitStep = 3

func (e *EBSBackup) steps(req BackupRequest) []backupStep {
	return []backupStep{
		{EBSSteps[0], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			b.Method, b.State, b.Version = MethodEBS, StateRunning, e.Version
			b.Trigger, b.Requester, b.Channel, b.Reason = req.Trigger, req.Requester, req.Channel, cmp.Or(req.Reason, b.Reason)
			if b.Started.IsZero() {
				b.Started = e.now()
			}
			p.Log("tag Name=" + e.NameTag)
			inst, err := FindBox(ctx, e.EC2, e.NameTag)
			if err != nil {
				return "", err
			}
			b.Shape = ShapeOf(inst)
			e.recordVolumes(ctx, b, inst, p)
			if err := e.Records.SaveBackup(ctx, b); err != nil {
				return "", err
			}
			return fmt.Sprintf("`%s` %s, %s, %d volumes", b.Shape.InstanceID, b.Shape.PrivateIP, b.Shape.Type, len(inst.BlockDeviceMappings)), nil
		}},
		{EBSSteps[1], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			inst, err := FindBox(ctx, e.EC2, e.NameTag)
			if err != nil {
				return "", err
			}
			if id := aws.ToString(inst.InstanceId); id != b.Shape.InstanceID {
				return "", fmt.Errorf("the Services box is now %s, not %s as when this backup began: take a new backup", id, b.Shape.InstanceID)
			}
			again := w.Sent
			if !again {
				// Durable before the call: if the bot dies before the
				// answer is journaled, the step run again looks first.
				w.Sent = true
				if err := w.save(); err != nil {
					return "", err
				}
			}
			b.Snapshots = nil
			// The volumes' own tags, to copy onto their snapshots (not
			// journaled: read again if this step runs again).
			_, volTags, err := BoxVolumes(ctx, e.EC2, inst)
			if err != nil {
				p.Log("could not read the volumes' tags (" + failure(err) + "); CreateSnapshots copies them")
				volTags = nil
			}
			if err := e.create(ctx, b, inst, volTags, p, again); err != nil {
				return "", err
			}
			if err := e.Records.SaveBackup(ctx, b); err != nil {
				return "", err
			}
			ids := make([]string, len(b.Snapshots))
			for i, s := range b.Snapshots {
				ids[i] = s.ID
			}
			return strings.Join(codes(ids), ", "), nil
		}},
		{EBSSteps[2], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			if slices.Contains(w.Record.Notes, perVolumeNote) {
				return "tagged as they were made", nil
			}
			n := e.tagDevices(ctx, &w.Record, p)
			return fmt.Sprintf("%d of %d tagged", n, len(w.Record.Snapshots)), nil
		}},
		{EBSSteps[3], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			if err := e.wait(ctx, b, p); err != nil {
				return "", err
			}
			return fmt.Sprintf("%d of %d snapshots completed", len(b.Snapshots), len(b.Snapshots)), nil
		}},
		{EBSSteps[4], func(ctx context.Context, w *BackupWork, p Progress) (string, error) {
			b := &w.Record
			b.State, b.Finished = StateCompleted, e.now()
			if err := e.Records.SaveBackup(ctx, b); err != nil {
				return "", err
			}
			return fmt.Sprintf("`%s`, %d GiB in %d snapshots", b.ID, b.SizeGiB(), len(b.Snapshots)), nil
		}},
	}
}

// Steps are the EBS backup's journaled steps, for the engine. A step
// that fails (not cut off by a shutdown) records the backup as failed
// before it returns: it is never offered as a restore point.
func (e *EBSBackup) Steps(req BackupRequest) []journal.Def {
	return journaled(e.steps(req), e.Records, e.now)
}

// Run takes the backup described by b (ID, trigger, requester set by the
// caller) and returns it completed or failed, without a journal: the
// same steps as Steps, one after the other.
func (e *EBSBackup) Run(ctx context.Context, b *Backup, p Progress) error {
	w := &BackupWork{Record: *b}
	err := direct(ctx, w, e.steps(BackupRequest{Trigger: b.Trigger, Requester: b.Requester, Channel: b.Channel, Reason: b.Reason}), e.Records, e.now, p)
	*b = w.Record
	return err
}

// LegacyBackup is how an EBS backup record an earlier version left
// "running" is journaled: with its snapshots known, the steps up to the
// wait are done and it is followed from there; without, it starts from
// the snapshot step, which finds by the backup's tag a set that version
// made and did not record.
func LegacyBackup(b *Backup) (work BackupWork, done int) {
	w := BackupWork{Record: *b, Sent: true}
	switch {
	case b.Method == MethodEBS && len(b.Snapshots) > 0:
		return w, ebsWaitStep
	case b.Shape.InstanceID != "":
		return w, 1
	}
	return w, 0
}

// journaled makes backup steps journal steps: the typed result is the
// work, and a step that fails (not because the bot stopped) marks the
// record failed first.
func journaled(steps []backupStep, recs RecordStore, now func() time.Time) []journal.Def {
	defs := make([]journal.Def, len(steps))
	for i, s := range steps {
		defs[i] = Def(s.name, func(ctx context.Context, w *Work[BackupWork], p journal.Progress) (string, error) {
			w.Result.Record.ID = w.ID
			w.Result.saver = w.Save
			defer func() { w.Result.saver = nil }()
			detail, err := s.run(ctx, w.Result, stepProgress{p, i})
			if err != nil && ctx.Err() == nil {
				failBackup(ctx, &w.Result.Record, err, recs, now)
			}
			return detail, err
		})
	}
	return defs
}

// direct runs backup steps one after the other, reporting to p, and
// records the outcome: what Run does without a journal.
func direct(ctx context.Context, w *BackupWork, steps []backupStep, recs RecordStore, now func() time.Time, p Progress) error {
	for i, s := range steps {
		p.Begin(i, "")
		detail, err := s.run(ctx, w, p)
		if err != nil {
			p.Fail(i, errors.New(Explain(err)))
			if ctx.Err() != nil {
				return err // cut off: the record stays as it was, to be followed again
			}
			return errors.Join(err, failBackup(ctx, &w.Record, err, recs, now))
		}
		p.Done(i, detail)
	}
	return nil
}

// failBackup records a backup as failed: never a restore point.
func failBackup(ctx context.Context, b *Backup, err error, recs RecordStore, now func() time.Time) error {
	b.State, b.Error, b.Finished = StateFailed, Explain(err), now()
	return recs.SaveBackup(ctx, b)
}

// stepProgress is a journal step's progress seen as ops.Progress: the
// step's own index for its percentage, skips as log lines.
type stepProgress struct {
	p journal.Progress
	i int
}

func (s stepProgress) Begin(i int, detail string) { s.p.Begin(i, detail) }
func (s stepProgress) Done(i int, detail string)  { s.p.Done(i, detail) }
func (s stepProgress) Fail(i int, err error)      { s.p.Fail(i, err) }
func (s stepProgress) Log(line string)            { s.p.Log(line) }
func (s stepProgress) Skip(_ int, why string)     { s.p.Log(why) }

func (s stepProgress) Progress(_ int, pct float64, detail string) {
	if pp, ok := s.p.(interface{ Progress(int, float64, string) }); ok {
		pp.Progress(s.i, pct, detail)
	}
}

// ShapeOf reads the launch shape of an instance.
func ShapeOf(in ec2types.Instance) Shape {
	s := Shape{
		InstanceID:   aws.ToString(in.InstanceId),
		Type:         string(in.InstanceType),
		PrivateIP:    aws.ToString(in.PrivateIpAddress),
		SubnetID:     aws.ToString(in.SubnetId),
		ImageID:      aws.ToString(in.ImageId),
		KeyName:      aws.ToString(in.KeyName),
		RootDevice:   aws.ToString(in.RootDeviceName),
		Architecture: string(in.Architecture),
		Tags:         map[string]string{},
		Boot:         bootOf(in),
	}
	if in.Placement != nil {
		s.AZ = aws.ToString(in.Placement.AvailabilityZone)
	}
	if in.IamInstanceProfile != nil {
		s.IAMProfile = aws.ToString(in.IamInstanceProfile.Arn)
	}
	for _, g := range in.SecurityGroups {
		s.SecurityGroups = append(s.SecurityGroups, aws.ToString(g.GroupId))
	}
	for _, t := range in.Tags {
		s.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	for _, eni := range in.NetworkInterfaces {
		if eni.Attachment != nil && aws.ToInt32(eni.Attachment.DeviceIndex) != 0 {
			// Another interface's addresses stay with that interface: a
			// restore reattaches it, and AWS refuses to give its
			// addresses to a second one.
			continue
		}
		for _, ip := range eni.PrivateIpAddresses {
			if a := aws.ToString(ip.PrivateIpAddress); a != s.PrivateIP {
				s.SecondaryIPs = append(s.SecondaryIPs, a)
			}
		}
	}
	return s
}

func (e *EBSBackup) tags(b *Backup) []ec2types.Tag {
	kv := [][2]string{
		{"Name", "circlebot " + b.ID},
		{TagBackupID, b.ID},
		{TagInstance, b.Shape.InstanceID},
		{TagPrivateIP, b.Shape.PrivateIP},
		{TagType, b.Shape.Type},
		{TagRequester, b.Requester},
		{TagTrigger, b.Trigger},
		{TagVersion, b.Version},
	}
	out := make([]ec2types.Tag, len(kv))
	for i, p := range kv {
		out[i] = ec2types.Tag{Key: aws.String(p[0]), Value: aws.String(p[1])}
	}
	return out
}

// create makes the snapshot set. CreateSnapshots is never retried
// blind: the SDK retries only throttled attempts (onceEC2), and an
// attempt whose answer was lost (a 5xx, a time-out) may have made the
// set. So each attempt after the first looks for snapshots already
// tagged with this backup's ID and adopts them instead; if it cannot
// look, it does not create.
//
// rerun: the step runs again after a crash or a lost answer (the call
// may have been made): the first attempt looks too.
func (e *EBSBackup) create(ctx context.Context, b *Backup, inst ec2types.Instance, volTags map[string][]ec2types.Tag, p Progress, rerun bool) error {
	devices := map[string]string{}
	for _, bd := range inst.BlockDeviceMappings {
		if bd.Ebs != nil {
			devices[aws.ToString(bd.Ebs.VolumeId)] = aws.ToString(bd.DeviceName)
		}
	}
	if len(devices) == 0 {
		return fmt.Errorf("snapshot volumes: instance %s has no EBS volumes", b.Shape.InstanceID)
	}
	pol := policy{Attempts: max(e.Attempts, 1), Pause: cmpOr(e.Retry, time.Second), MaxPause: 30 * time.Second}
	final, tries := false, 0 // final: an outcome that trying again would not change
	err := again(ctx, pol, func(err error) bool {
		return !final && (transient(err) || errors.Is(err, ErrSnapshotLimit))
	}, func(attempt int) error {
		tries = attempt
		if attempt > 1 || rerun {
			found, err := e.existingSettled(ctx, b.ID)
			if err != nil {
				p.Log(fmt.Sprintf("could not check for snapshots of an earlier attempt (%s); not creating blind", failure(err)))
				return err
			}
			if len(found) > 0 {
				final = true
				if len(found) != len(devices) {
					return fmt.Errorf("snapshot volumes of %s: an earlier attempt left %d of %d snapshots (%s); refusing to call that a restore point", b.Shape.InstanceID, len(found), len(devices), snapshotIDs(found))
				}
				p.Log(fmt.Sprintf("found the %d snapshots of an earlier attempt; using them", len(found)))
				b.Snapshots = withDevices(found, devices)
				return nil
			}
		}
		in := &ec2.CreateSnapshotsInput{
			InstanceSpecification: &ec2types.InstanceSpecification{InstanceId: inst.InstanceId, ExcludeBootVolume: aws.Bool(false)},
			Description:           aws.String(BackupDescription(b.Started)),
			TagSpecifications:     []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: e.tags(b)}},
		}
		// A snapshot holds 50 tags: a volume with more than the bot's
		// tags leave room for gets a trimmed copy afterwards (copyTags).
		fit := tagsFit(volTags)
		if fit {
			in.CopyTagsFromSource = ec2types.CopyTagsFromSourceVolume
		}
		out, err := e.EC2.CreateSnapshots(ctx, in, onceEC2)
		if err == nil {
			var refs []SnapshotRef
			for _, s := range out.Snapshots {
				refs = append(refs, SnapshotRef{ID: aws.ToString(s.SnapshotId), VolumeID: aws.ToString(s.VolumeId), SizeGiB: aws.ToInt32(s.VolumeSize), State: string(s.State), Progress: aws.ToString(s.Progress)})
			}
			b.Snapshots = withDevices(refs, devices)
			if !fit {
				e.copyTags(ctx, b, volTags, p)
			}
			return nil
		}
		switch err = translate(err); {
		case errors.Is(err, ErrUnsupported):
			final = true
			p.Log("CreateSnapshots is not available here; falling back to one snapshot per volume (not crash-consistent across volumes)")
			b.Notes = append(b.Notes, perVolumeNote)
			return e.perVolume(ctx, b, devices, volTags, p)
		case errors.Is(err, ErrSnapshotLimit), errors.Is(err, ErrThrottled), transient(err):
			return err
		}
		final = true
		return fmt.Errorf("snapshot volumes of %s: %w", b.Shape.InstanceID, err)
	}, func(err error, next int, pause time.Duration) {
		what := "no answer from EC2"
		switch {
		case errors.Is(err, ErrSnapshotLimit):
			what = "the account is at its limit of snapshots in progress"
		case errors.Is(err, ErrThrottled):
			what = "AWS is throttling snapshot requests"
		case errors.Is(err, ErrUnavailable):
			what = "EC2 failed the call"
		}
		p.Log(fmt.Sprintf("%s (%s); waiting %s, then checking whether the snapshots were made before attempt %d of %d", what, failure(err), pause, next, pol.Attempts))
	})
	if err != nil && !final {
		return fmt.Errorf("snapshot volumes of %s after %d attempts: %w", b.Shape.InstanceID, tries, err)
	}
	return err
}

func snapshotIDs(refs []SnapshotRef) string {
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	return strings.Join(ids, ", ")
}

func (e *EBSBackup) perVolume(ctx context.Context, b *Backup, devices map[string]string, volTags map[string][]ec2types.Tag, p Progress) error {
	vols := make([]string, 0, len(devices))
	for v := range devices {
		vols = append(vols, v)
	}
	sort.Strings(vols)
	for _, v := range vols {
		tags := append(e.tags(b), ec2types.Tag{Key: aws.String(TagVolume), Value: aws.String(v)}, ec2types.Tag{Key: aws.String(TagDevice), Value: aws.String(devices[v])})
		copied, left := copyableTags(volTags[v], maxTagsPerResource-len(tags))
		tags = append(tags, copied...)
		e.trimmed(b, v, devices[v], len(copied), left, p)
		out, err := e.EC2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{
			VolumeId: aws.String(v), Description: aws.String(BackupDescription(b.Started)),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeSnapshot, Tags: tags}},
		}, onceEC2) // a lost answer must not become a second snapshot
		if err != nil {
			return fmt.Errorf("snapshot volume %s: %w", v, translate(err))
		}
		b.Snapshots = append(b.Snapshots, SnapshotRef{ID: aws.ToString(out.SnapshotId), VolumeID: v, Device: devices[v], SizeGiB: aws.ToInt32(out.VolumeSize), State: string(out.State)})
	}
	return nil
}

// tagDevices records which device each snapshot came from, which a
// restore needs to rebuild the block device mapping; it returns how many
// it tagged. A failure here is logged, not fatal: the bot's record holds
// the same mapping. Tagging again is harmless, so a step run again after
// a crash simply tags again.
func (e *EBSBackup) tagDevices(ctx context.Context, b *Backup, p Progress) int {
	n := 0
	for _, s := range b.Snapshots {
		_, err := e.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{s.ID}, Tags: []ec2types.Tag{
			{Key: aws.String(TagVolume), Value: aws.String(s.VolumeID)},
			{Key: aws.String(TagDevice), Value: aws.String(s.Device)},
		}})
		if err != nil {
			p.Log(fmt.Sprintf("could not tag %s with its device (%s); the bot's record keeps it", s.ID, failure(translate(err))))
			continue
		}
		n++
	}
	return n
}

// existingSettled looks for the set an earlier attempt may have made,
// more than once before it answers "none": CreateSnapshots takes no
// client token, and EC2's reads lag its writes (a set made a second ago
// may not be listed yet), so one empty answer is not proof enough to ask
// for a second set.
func (e *EBSBackup) existingSettled(ctx context.Context, id string) ([]SnapshotRef, error) {
	pause := cmpOr(e.Retry, time.Second)
	for look := 1; ; look++ {
		found, err := e.existing(ctx, id)
		if err != nil || len(found) > 0 || look == 3 {
			return found, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
	}
}

func (e *EBSBackup) existing(ctx context.Context, id string) ([]SnapshotRef, error) {
	out, err := e.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagBackupID), Values: []string{id}}},
	})
	if err != nil {
		return nil, translate(err)
	}
	var refs []SnapshotRef
	for _, s := range out.Snapshots {
		refs = append(refs, SnapshotRef{ID: aws.ToString(s.SnapshotId), VolumeID: aws.ToString(s.VolumeId), SizeGiB: aws.ToInt32(s.VolumeSize), State: string(s.State), Progress: aws.ToString(s.Progress)})
	}
	return refs, nil
}

func withDevices(refs []SnapshotRef, devices map[string]string) []SnapshotRef {
	for i := range refs {
		refs[i].Device = devices[refs[i].VolumeID]
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].Device < refs[j].Device })
	return refs
}

// wait polls the set until every snapshot is completed or one is in error.
// The interval starts at PollMin and grows to PollMax, so a quick snapshot
// is noticed within a second and a slow one costs few API calls.
func (e *EBSBackup) wait(ctx context.Context, b *Backup, p Progress) error {
	interval := cmpOr(e.PollMin, 500*time.Millisecond)
	maxInterval := cmpOr(e.PollMax, 1500*time.Millisecond)
	ids := make([]string, len(b.Snapshots))
	for i, s := range b.Snapshots {
		ids[i] = s.ID
	}
	lastPct := -1.0
	start := time.Now()
	for {
		out, err := e.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
		// EC2 is eventually consistent: a snapshot just made can be "not
		// found" for a little while.
		// (A transient failure is a poll that saw nothing, as in waitFor.)
		err = translate(err)
		young := errors.Is(err, ErrNotFound) && time.Since(start) < time.Minute
		if err != nil && !transient(err) && !young {
			return fmt.Errorf("read snapshot state: %w", err)
		}
		if err == nil {
			done, pct, failed := 0, 0.0, ""
			byID := map[string]ec2types.Snapshot{}
			for _, s := range out.Snapshots {
				byID[aws.ToString(s.SnapshotId)] = s
			}
			for i := range b.Snapshots {
				s, ok := byID[b.Snapshots[i].ID]
				if !ok {
					return fmt.Errorf("snapshot %s disappeared while it was being made: %w", b.Snapshots[i].ID, ErrNotFound)
				}
				b.Snapshots[i].State, b.Snapshots[i].Progress = string(s.State), aws.ToString(s.Progress)
				switch s.State {
				case ec2types.SnapshotStateCompleted:
					done++
					pct += 100
				case ec2types.SnapshotStateError, ec2types.SnapshotStateRecoverable:
					failed = fmt.Sprintf("snapshot %s of %s (%s) is in state %s: %s", b.Snapshots[i].ID, b.Snapshots[i].VolumeID, b.Snapshots[i].Device, s.State, aws.ToString(s.StateMessage))
				default:
					pct += parsePct(aws.ToString(s.Progress))
				}
			}
			if failed != "" {
				return errors.New(failed)
			}
			if done == len(b.Snapshots) {
				return nil
			}
			pct /= float64(len(b.Snapshots))
			if pct != lastPct {
				p.Progress(ebsWaitStep, pct, fmt.Sprintf("%d of %d snapshots completed", done, len(b.Snapshots)))
				lastPct = pct
			}
		}
		if err := sleep(ctx, interval); err != nil {
			return err
		}
		interval = min(interval*2, maxInterval)
	}
}

func parsePct(s string) float64 {
	var f float64
	if _, err := fmt.Sscanf(strings.TrimSuffix(s, "%"), "%g", &f); err != nil {
		return 0
	}
	return f
}

func codes(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = "`" + id + "`"
	}
	return out
}
