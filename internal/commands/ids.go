package commands

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// awsKinds are the AWS IDs a user may paste by mistake where another kind
// is wanted; naming what they pasted is quicker to act on than "invalid".
var awsKinds = []struct{ prefix, noun string }{
	{"snap-", "a snapshot ID"},
	{"i-", "an instance ID"},
	{"ami-", "an AMI ID"},
	{"vol-", "a volume ID"},
}

// awsID reports whether tok is prefix followed by 8 or 17 hex digits (the
// old and the current length of EC2 IDs), and returns it lowercased: the
// console shows them lowercase, but case does not change the number.
func awsID(tok, prefix string) (string, bool) {
	id := asciiLower(tok)
	hex, ok := strings.CutPrefix(id, prefix)
	if !ok || (len(hex) != 8 && len(hex) != 17) {
		return "", false
	}
	for i := 0; i < len(hex); i++ {
		c := hex[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return id, true
}

// awsKindOf names the kind of a well-formed AWS ID, or "".
func awsKindOf(tok string) string {
	for _, k := range awsKinds {
		if _, ok := awsID(tok, k.prefix); ok {
			return k.noun
		}
	}
	return ""
}

const snapshotShape = "snap- followed by 8 or 17 hex digits"

// snapshotProblem explains why tok is not a snapshot ID, to a command
// (what) that also takes the alternatives in also.
func snapshotProblem(tok, what, also string) string {
	if kind := awsKindOf(tok); kind != "" {
		return fmt.Sprintf("%s is %s; %s takes a snapshot ID (%s)%s", quote(tok), kind, what, snapshotShape, also)
	}
	if strings.HasPrefix(asciiLower(tok), "snap-") {
		return fmt.Sprintf("%s is not a snapshot ID (expected %s)", quote(tok), snapshotShape)
	}
	return fmt.Sprintf("%s is not a snapshot ID%s", quote(tok), also)
}

// parseInstanceID validates the value of failover --to.
func parseInstanceID(tok string) (string, string) {
	if id, ok := awsID(tok, "i-"); ok {
		return id, ""
	}
	const shape = "i- followed by 8 or 17 hex digits"
	if kind := awsKindOf(tok); kind != "" {
		return "", fmt.Sprintf("%s is %s; --to takes an instance ID (%s)", quote(tok), kind, shape)
	}
	return "", fmt.Sprintf("%s is not an instance ID (expected %s)", quote(tok), shape)
}

// isS3URI reports whether tok is meant as an S3 URI, valid or not, so the
// error can be about the URI rather than "not a snapshot ID".
func isS3URI(tok string) bool {
	return len(tok) >= 5 && asciiLower(tok[:5]) == "s3://"
}

const maxS3KeyBytes = 1024

// parseS3URI splits "s3://bucket/key" and validates both parts by S3's
// naming rules, so a typo is caught here and not by an AccessDenied later.
func parseS3URI(tok string) (bucket, key, problem string) {
	rest := tok[len("s3://"):]
	bucket, key, found := strings.Cut(rest, "/")
	if !found || key == "" {
		return "", "", fmt.Sprintf("%s has no object key (expected s3://bucket/key)", quote(tok))
	}
	if why := bucketProblem(bucket); why != "" {
		return "", "", fmt.Sprintf("S3 bucket %s %s", quote(bucket), why)
	}
	if why := keyProblem(key); why != "" {
		return "", "", "the S3 key " + why
	}
	return bucket, key, ""
}

func bucketProblem(b string) string {
	if len(b) < 3 || len(b) > 63 {
		return "is not a valid bucket name (3 to 63 characters)"
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '-':
		case 'A' <= c && c <= 'Z':
			// Lowercasing could name a different bucket; S3 has not
			// allowed uppercase in new bucket names for years.
			return "is not a valid bucket name (bucket names are lowercase)"
		default:
			return "is not a valid bucket name (only lowercase letters, digits, dots and dashes)"
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return "is not a valid bucket name (it must start and end with a letter or digit)"
	}
	if strings.Contains(b, "..") {
		return `is not a valid bucket name (it contains "..")`
	}
	if _, err := netip.ParseAddr(b); err == nil {
		return "is not a valid bucket name (it is an IP address)"
	}
	return ""
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func keyProblem(k string) string {
	if len(k) > maxS3KeyBytes {
		return fmt.Sprintf("is %d bytes long (S3 allows at most %d)", len(k), maxS3KeyBytes)
	}
	if !utf8.ValidString(k) {
		return "is not valid UTF-8"
	}
	for _, r := range k {
		switch {
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			return "contains a control character"
		// "<" and ">" cannot survive Slack's link unwrapping, "&" cannot
		// survive its escaping, and a backtick would break the code span
		// the command is shown in. AWS advises against all of them.
		case r == '&' || r == '<' || r == '>' || r == '`':
			return "contains &, <, > or a backtick; such keys are not supported here"
		}
	}
	return ""
}

// parseOpID accepts approval request and operation IDs, which the bot
// makes itself: ^[a-z0-9][a-z0-9-]{2,63}$ after lowercasing.
func parseOpID(tok string) (string, bool) {
	id := asciiLower(tok)
	if len(id) < 3 || len(id) > 64 || id[0] == '-' {
		return "", false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '-' {
			return "", false
		}
	}
	return id, true
}

var backupIDRE = regexp.MustCompile(`^bk-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$`)

// BackupID accepts the bot's own restore point IDs, e.g. bk-20261128-031500-7f3a
// (UTC start time and a random suffix: sortable and unique).
func BackupID(tok string) (string, bool) {
	id := strings.ToLower(tok)
	return id, backupIDRE.MatchString(id)
}

// instanceTypeRE is the shape of an EC2 instance type: a family (m5,
// c6gn, u-6tb1, m7i-flex) and a size (xlarge, 2xlarge, metal,
// metal-24xl), lowercased. Only the shape is checked here: whether AWS
// has such a type, and offers it where the box runs, is the plan's to
// find out.
var instanceTypeRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}\.[a-z0-9][a-z0-9-]{0,23}$`)

// parseInstanceType validates the argument of resize.
func parseInstanceType(tok string) (string, string) {
	t := asciiLower(tok)
	if instanceTypeRE.MatchString(t) {
		return t, ""
	}
	const shape = "family.size, e.g. m5.2xlarge"
	if kind := awsKindOf(tok); kind != "" {
		return "", fmt.Sprintf("%s is %s; resize takes an instance type (%s)", quote(tok), kind, shape)
	}
	return "", fmt.Sprintf("%s is not an instance type (expected %s)", quote(tok), shape)
}
