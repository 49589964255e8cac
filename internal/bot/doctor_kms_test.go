package bot

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/circlebot/circlebot/internal/ops"
)

// keys answers DescribeKey with each key's state.
type keys map[string]kmstypes.KeyState

func (k keys) DescribeKey(_ context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	st, ok := k[aws.ToString(in.KeyId)]
	if !ok {
		return nil, errors.New("NotFoundException")
	}
	return &kms.DescribeKeyOutput{KeyMetadata: &kmstypes.KeyMetadata{KeyId: in.KeyId, KeyState: st}}, nil
}

// A key in aws.kms_key_arns that is disabled or pending deletion fails
// every launch from snapshots under it: doctor names it and its state.
func TestDoctorKMSCheckFailsAKeyThatIsNotEnabled(t *testing.T) {
	const a, b = "arn:aws:kms:us-east-1:111122223333:key/a", "arn:aws:kms:us-east-1:111122223333:key/b"
	vols := []ops.VolumeSpec{{Device: "/dev/sdf", Encrypted: true, KMSKeyID: a}}
	d := &Doctor{KMSKeys: []string{a, b}, KMS: keys{a: kmstypes.KeyStateEnabled, b: kmstypes.KeyStatePendingDeletion},
		Volumes: func(context.Context) ([]ops.VolumeSpec, error) { return vols, nil }}
	c := d.kmsCheck(context.Background())
	if c.Verdict != VerdictFail || !strings.Contains(c.Detail, b) || !strings.Contains(c.Detail, "PendingDeletion") || strings.Contains(c.Detail, a+" is") {
		t.Errorf("a key pending deletion: %+v", c)
	}
	d.KMS = keys{a: kmstypes.KeyStateEnabled, b: kmstypes.KeyStateEnabled}
	if c := d.kmsCheck(context.Background()); c.Verdict != VerdictOK || !strings.Contains(c.Detail, "the 2 key(s) there enabled") {
		t.Errorf("both enabled: %+v", c)
	}
}

// A volume encrypted under a key the policy does not name would make a
// restore's launch fail after the old box is gone: doctor fails it, naming
// the key and the device.
func TestDoctorKMSCheckNamesAKeyThePolicyDoesNotCover(t *testing.T) {
	const known, other = "arn:aws:kms:us-east-1:111122223333:key/known", "arn:aws:kms:us-east-1:111122223333:key/other"
	vols := []ops.VolumeSpec{
		{Device: "/dev/sda1"},
		{Device: "/dev/sdf", Encrypted: true, KMSKeyID: known},
		{Device: "/dev/sdg", Encrypted: true, KMSKeyID: other},
	}
	d := &Doctor{KMSKeys: []string{known}, Volumes: func(context.Context) ([]ops.VolumeSpec, error) { return vols, nil }}
	c := d.kmsCheck(context.Background())
	if c.Verdict != VerdictFail || !strings.Contains(c.Detail, other) || !strings.Contains(c.Detail, "/dev/sdg") || strings.Contains(c.Detail, known) || !strings.Contains(c.Fix, "aws.kms_key_arns") {
		t.Errorf("an uncovered key: %+v", c)
	}
	d.KMSKeys = []string{known, other}
	if c := d.kmsCheck(context.Background()); c.Verdict != VerdictOK || !strings.Contains(c.Detail, "2 key(s)") {
		t.Errorf("both covered: %+v", c)
	}
	d.Volumes = func(context.Context) ([]ops.VolumeSpec, error) { return nil, errors.New("boom") }
	if c := d.kmsCheck(context.Background()); c.Verdict != VerdictFail {
		t.Errorf("unreadable volumes: %+v", c)
	}
}
