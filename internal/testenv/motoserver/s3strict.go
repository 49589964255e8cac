package motoserver

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// strictS3Launcher patches moto's S3 multipart uploads to answer as S3
// does (see the script's docstring).
//
//go:embed launcher/moto_s3strict.py
var strictS3Launcher []byte

// WithStrictS3 runs the embedded launcher/moto_s3strict.py in front of
// moto_server (or in front of the patched launcher, when combined with
// WithPatchedSnapshots), so that S3 multipart uploads answer as S3 does
// rather than as moto 5.2.1 does:
//
//   - a part or object encrypted with SSE-KMS (by its upload or by the
//     bucket's default encryption) has an ETag that is not the MD5 of its
//     data, and a multipart object of such parts one that is not the MD5
//     of their MD5s;
//   - UploadPart checks x-amz-checksum-sha256 (and -sha1, -crc32) against
//     the data and answers 400 BadDigest on a mismatch, storing nothing;
//   - UploadPart into an Object Lock bucket with a default retention needs
//     Content-MD5 or an x-amz-checksum-* header (400 InvalidRequest);
//   - a presigned UploadPart missing a header it signed answers 403
//     SignatureDoesNotMatch;
//   - CompleteMultipartUpload of an upload created with a checksum
//     algorithm needs each part's checksum as the part was stored (400
//     InvalidRequest when missing, InvalidPart when different).
func WithStrictS3() Option {
	return func(o *options) {
		path, err := writeAsset("s3strict", "moto_s3strict.py", strictS3Launcher)
		if err != nil {
			path = filepath.Join(os.TempDir(), "circlebot-moto-s3strict-unwritable", fmt.Sprintf("(%v)", err))
		}
		o.s3strict = path
	}
}

// strictCommand is the command of a server started WithStrictS3: python3
// running the strict script, which then runs o's launcher (named in the
// environment, see env) or moto_server's main.
func (o options) strictCommand() (string, []string, error) {
	if _, err := os.Stat(o.s3strict); err != nil {
		return "", nil, fmt.Errorf("motoserver: strict S3 launcher script: %w", err)
	}
	if o.launcher != "" {
		if _, err := os.Stat(o.launcher); err != nil {
			return "", nil, fmt.Errorf("motoserver: launcher script: %w", err)
		}
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		return "", nil, fmt.Errorf("motoserver: python3 not found on PATH (needed for launcher %s): %w", o.s3strict, err)
	}
	return unshim(py), []string{o.s3strict}, nil
}

// strictEnv names the launcher the strict script hands over to.
func (o options) strictEnv() []string {
	if o.s3strict == "" || o.launcher == "" {
		return nil
	}
	return []string{"CIRCLEBOT_CHAIN_LAUNCHER=" + o.launcher}
}
